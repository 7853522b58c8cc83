package disks

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"opendev.org/x/ferry/pkg/errdefs"
)

// ValidUUID accepts only a canonical, lower-case UUID (8-4-4-4-12 hex
// digits), the form Nova gives every instance. Instance ids become directory
// names and libvirt domain names, so anything else — "", "../victim", a
// number — is refused before it gets near a path.
func ValidUUID(s string) error {
	if len(s) != 36 {
		return fmt.Errorf("%w: %q is not a canonical uuid", errdefs.ErrInvalidArgument, s)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case i == 8 || i == 13 || i == 18 || i == 23:
			if c != '-' {
				return fmt.Errorf("%w: %q is not a canonical uuid", errdefs.ErrInvalidArgument, s)
			}
		case c >= '0' && c <= '9', c >= 'a' && c <= 'f':
		default:
			return fmt.Errorf("%w: %q is not a canonical uuid", errdefs.ErrInvalidArgument, s)
		}
	}
	return nil
}

// InstanceDir is an instance's own directory, a direct child of the
// instances path.
func InstanceDir(instancesPath, uuid string) (string, error) {
	if err := ValidUUID(uuid); err != nil {
		return "", fmt.Errorf("instance directory: %w", err)
	}
	if !filepath.IsAbs(instancesPath) {
		return "", fmt.Errorf("instance directory: %w: instances path %q is not absolute", errdefs.ErrInvalidArgument, instancesPath)
	}
	return filepath.Join(filepath.Clean(instancesPath), uuid), nil
}

// ChildOf checks that path names an entry directly inside dir, after
// cleaning: what ferry creates or deletes is always one level below the
// directory it owns (an instance directory below the instances path, a disk
// below its instance directory).
func ChildOf(dir, path string) error {
	d, p := filepath.Clean(dir), filepath.Clean(path)
	if filepath.Dir(p) != d || filepath.Base(p) == ".." || p == d {
		return fmt.Errorf("%w: %s is not directly inside %s", errdefs.ErrInvalidArgument, path, dir)
	}
	return nil
}

// RealDir checks that path is a directory itself, not a symbolic link to
// one: removing through a link would remove what it points at.
func RealDir(path string) error {
	fi, err := os.Lstat(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return fmt.Errorf("%s: %w", path, errdefs.ErrNotFound)
	case err != nil:
		return err
	case fi.Mode()&os.ModeSymlink != 0:
		return fmt.Errorf("%w: %s is a symbolic link", errdefs.ErrInvalidArgument, path)
	case !fi.IsDir():
		return fmt.Errorf("%w: %s is not a directory", errdefs.ErrInvalidArgument, path)
	}
	return nil
}
