package cutover

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
)

// INIFile edits an oslo.config file in place: one option of one section,
// every other line and comment kept, written atomically (a temporary file
// beside it, synced, given the original's mode and owner, renamed over
// it). A file that would not change is not written.
type INIFile struct{}

// Set sets [section] option = value.
func (INIFile) Set(path, section, option, value string) error {
	return editFile(path, func(text string) string { return setOption(text, section, option, &value) })
}

// Unset removes every [section] option line.
func (INIFile) Unset(path, section, option string) error {
	return editFile(path, func(text string) string { return setOption(text, section, option, nil) })
}

var (
	sectionRe = regexp.MustCompile(`^\s*\[([^\]]+)\]\s*$`)
	optionRe  = regexp.MustCompile(`^([A-Za-z0-9_.\-]+)\s*[=:]`)
)

// setOption returns text with option set to *value in every block of
// section (the first occurrence replaced, later ones and their
// continuation lines removed), or removed when value is nil. A missing
// option goes right below the first header of section; a missing section
// is added at the top.
func setOption(text, section, option string, value *string) string {
	lines := strings.SplitAfter(text, "\n")
	if len(lines) > 0 && lines[len(lines)-1] == "" {
		lines = lines[:len(lines)-1]
	}
	var out []string
	in, done, skipping := false, false, false
	header := -1 // index in out of the section's first header
	for _, l := range lines {
		body := strings.TrimRight(l, "\r\n")
		if m := sectionRe.FindStringSubmatch(body); m != nil {
			in, skipping = strings.TrimSpace(m[1]) == section, false
			out = append(out, l)
			if in && header < 0 {
				header = len(out) - 1
			}
			continue
		}
		if skipping && body != "" && (body[0] == ' ' || body[0] == '\t') {
			continue // a continuation of the option being replaced or removed
		}
		skipping = false
		if m := optionRe.FindStringSubmatch(body); in && m != nil && m[1] == option {
			skipping = true
			if value != nil && !done {
				out = append(out, option+" = "+*value+eol(l))
				done = true
			}
			continue
		}
		out = append(out, l)
	}
	if value != nil && !done {
		line := option + " = " + *value + "\n"
		if header >= 0 {
			if !strings.HasSuffix(out[header], "\n") {
				out[header] += "\n"
			}
			out = append(out[:header+1], append([]string{line}, out[header+1:]...)...)
		} else {
			top := []string{"[" + section + "]\n", line}
			if len(out) > 0 {
				top = append(top, "\n")
			}
			out = append(top, out...)
		}
	}
	return strings.Join(out, "")
}

func eol(l string) string {
	if strings.HasSuffix(l, "\r\n") {
		return "\r\n"
	}
	return "\n"
}

func editFile(path string, edit func(string) string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("edit %s: %w", path, err)
	}
	text := edit(string(b))
	if text == string(b) {
		return nil
	}
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("edit %s: %w", path, err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".ferry-*")
	if err != nil {
		return fmt.Errorf("edit %s: %w", path, err)
	}
	defer os.Remove(tmp.Name()) // after the rename, nothing
	if _, err = tmp.WriteString(text); err == nil {
		err = tmp.Chmod(fi.Mode().Perm())
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && err == nil {
		err = tmp.Chown(int(st.Uid), int(st.Gid))
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		return fmt.Errorf("edit %s: %w", path, err)
	}
	return nil
}
