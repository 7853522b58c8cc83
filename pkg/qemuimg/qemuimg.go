// Package qemuimg runs qemu-img: what an image is (format, sizes, backing
// chain) and creating the images a migration destination needs. It is the
// only place ferry runs qemu-img.
package qemuimg

import (
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"strconv"

	"opendev.org/x/ferry/pkg/errdefs"
)

// Info describes an image and the chain below it.
type Info struct {
	Format        string
	VirtualSize   int64
	ActualSize    int64
	Backing       string // full path of the backing file; "" for a flat image
	BackingFormat string
	ChainDepth    int // layers below this one
}

type layer struct {
	Format        string `json:"format"`
	VirtualSize   int64  `json:"virtual-size"`
	ActualSize    int64  `json:"actual-size"`
	Backing       string `json:"full-backing-filename"`
	BackingFormat string `json:"backing-filename-format"`
}

// Read reads an image that may be in use (qemu-img -U). format is the
// format the domain uses; "" lets qemu-img probe, which only a trusted image
// should get.
func Read(ctx context.Context, path, format string) (Info, error) {
	args := []string{"info", "-U", "--backing-chain", "--output=json"}
	if format != "" {
		args = append(args, "-f", format)
	}
	out, err := exec.CommandContext(ctx, "qemu-img", append(args, path)...).Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		return Info{}, fmt.Errorf("qemu-img info %s: %w: %v: %s", path, errdefs.ErrFailedPrecondition, err, stderr)
	}
	return parse(out)
}

func parse(out []byte) (Info, error) {
	var chain []layer
	if err := json.Unmarshal(out, &chain); err != nil || len(chain) == 0 {
		return Info{}, fmt.Errorf("qemu-img info: %w: unreadable output %.200q", errdefs.ErrInvalidArgument, out)
	}
	top := chain[0]
	return Info{Format: top.Format, VirtualSize: top.VirtualSize, ActualSize: top.ActualSize,
		Backing: top.Backing, BackingFormat: top.BackingFormat, ChainDepth: len(chain) - 1}, nil
}

// Spec is an image to create.
type Spec struct {
	Path          string
	Format        string
	Size          int64  // virtual size in bytes
	Backing       string // full path of the backing file; "" for a flat image
	BackingFormat string
}

// Create makes the image, replacing nothing: the caller removes a stale
// file first. An overlay names its backing file by its full path and format,
// so QEMU never probes the base.
func Create(ctx context.Context, s Spec) error {
	args := []string{"create", "-q", "-f", s.Format}
	if s.Backing != "" {
		if !filepath.IsAbs(s.Backing) || s.BackingFormat == "" {
			return fmt.Errorf("create %s: %w: backing file %q needs a full path and a format", s.Path, errdefs.ErrInvalidArgument, s.Backing)
		}
		args = append(args, "-b", s.Backing, "-F", s.BackingFormat)
	}
	args = append(args, s.Path, strconv.FormatInt(s.Size, 10))
	if out, err := exec.CommandContext(ctx, "qemu-img", args...).CombinedOutput(); err != nil {
		return fmt.Errorf("qemu-img create %s: %w: %s", s.Path, err, out)
	}
	return nil
}

// ConvertRaw writes src, read as format (never probed: src is untrusted),
// to dst as a raw image. dst must not exist.
func ConvertRaw(ctx context.Context, src, format, dst string) error {
	if format == "" {
		return fmt.Errorf("convert %s: %w: the source format is required", src, errdefs.ErrInvalidArgument)
	}
	if out, err := exec.CommandContext(ctx, "qemu-img", "convert", "-q", "-f", format, "-O", "raw", src, dst).CombinedOutput(); err != nil {
		return fmt.Errorf("qemu-img convert %s: %w: %s", src, err, out)
	}
	return nil
}
