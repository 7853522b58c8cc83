package disks

import (
	"fmt"
	"path/filepath"
	"strings"

	"opendev.org/x/ferry/pkg/errdefs"
)

// Image is a copied disk as the source sees it, and as pre_live_migration's
// disk argument describes it to the destination.
type Image struct {
	Path        string // the disk's path, the same on both hosts
	Format      string // qcow2 or raw
	VirtualSize int64
	ActualSize  int64
	// Backing is the base name of the image's backing file ("" for a flat
	// image). Nova keeps backing files in its image cache, so the
	// destination looks for this name in its own.
	Backing string
	// BackingPath is the backing file's full path on the source. Only a
	// base in the source's image cache (<instances_path>/_base by default)
	// has a name that means the same image on another host.
	BackingPath string
	// ChainDepth counts the layers below the image: 0 flat, 1 an overlay on
	// a flat base, 2 or more a longer chain.
	ChainDepth int
}

// CacheSubdir is Nova's default image cache directory below the instances
// path ([image_cache] subdirectory_name), where backing files live.
const CacheSubdir = "_base"

// Offer is what the source proposes before pre_live_migration: the images
// to describe (each with or without its backing file) and whether the copy
// may be incremental. Incremental copying (libvirt's non-shared-incremental,
// QEMU's drive-mirror sync=top) moves only each image's top layer; it is
// offered only when every overlay sits directly on its base, because the
// destination can supply one base per disk and nothing below it. The offer is
// final only once the destination has pre-created every overlay; if it
// cannot, the source falls back to Flat and a full copy.
func Offer(imgs []Image, cacheDir string) (out []Image, incremental bool, why string) {
	out = make([]Image, len(imgs))
	copy(out, imgs)
	backed := 0
	for _, im := range imgs {
		switch {
		case im.Backing == "" && im.ChainDepth == 0:
		case im.ChainDepth > 1:
			return Flat(imgs), false, fmt.Sprintf("%s has a backing chain %d layers deep", im.Path, im.ChainDepth)
		case im.Backing == "" || filepath.Clean(im.BackingPath) != filepath.Join(filepath.Clean(cacheDir), im.Backing):
			return Flat(imgs), false, fmt.Sprintf("%s is backed by %s, outside the image cache %s", im.Path, im.BackingPath, cacheDir)
		default:
			backed++
		}
	}
	if backed == 0 {
		return out, false, "no copied disk has a backing file"
	}
	return out, true, ""
}

// Flat drops the backing files: the destination creates flat images and
// every byte is copied.
func Flat(imgs []Image) []Image {
	out := make([]Image, len(imgs))
	for i, im := range imgs {
		im.Backing, im.BackingPath, im.ChainDepth = "", "", 0
		out[i] = im
	}
	return out
}

// Create is one image the destination creates before the migration.
type Create struct {
	Path          string
	Format        string
	Size          int64  // virtual size in bytes
	Backing       string // full path of the backing file; "" for a flat image
	BackingFormat string
}

// Bases answers whether the named backing file exists on this host, and its
// format.
type Bases func(name string) (format string, ok bool)

// Precreate plans the destination's images for the disks the source
// described: an overlay on the local base when the source named one, a flat
// image of the same format and virtual size otherwise. Every image is a
// file directly inside the instance's own directory (Nova's disk, disk.local,
// …), so pre-creating one never touches another instance's files. It
// refuses, naming every problem, other paths, formats other than qcow2 and
// raw, and backing files this host does not have, so that the source can
// fall back to a full copy.
func Precreate(imgs []Image, instanceDir, cacheDir string, bases Bases) ([]Create, error) {
	cache := filepath.Clean(cacheDir)
	var out []Create
	var bad, missing []string
	for _, im := range imgs {
		p := filepath.Clean(im.Path)
		switch {
		case ChildOf(instanceDir, p) != nil || strings.HasPrefix(filepath.Base(p), "."):
			bad = append(bad, fmt.Sprintf("disk %s is not a file of the instance directory %s", im.Path, instanceDir))
			continue
		case im.Format != "qcow2" && im.Format != "raw":
			bad = append(bad, fmt.Sprintf("disk %s has format %q; ferry pre-creates qcow2 and raw", im.Path, im.Format))
			continue
		case im.VirtualSize <= 0:
			bad = append(bad, fmt.Sprintf("disk %s has no virtual size", im.Path))
			continue
		}
		c := Create{Path: p, Format: im.Format, Size: im.VirtualSize}
		if im.Backing != "" {
			if im.Backing != filepath.Base(im.Backing) || im.Backing == "." || im.Backing == ".." {
				bad = append(bad, fmt.Sprintf("disk %s names backing file %q, not a base name", im.Path, im.Backing))
				continue
			}
			if im.Format != "qcow2" {
				bad = append(bad, fmt.Sprintf("disk %s is %s with a backing file; only qcow2 overlays are pre-created", im.Path, im.Format))
				continue
			}
			f, ok := bases(im.Backing)
			if !ok {
				missing = append(missing, im.Backing)
				continue
			}
			c.Backing, c.BackingFormat = filepath.Join(cache, im.Backing), f
		}
		out = append(out, c)
	}
	switch {
	case len(bad) > 0:
		return nil, fmt.Errorf("%w: %s", errdefs.ErrInvalidArgument, strings.Join(append(bad, missingText(cache, missing)...), "; "))
	case len(missing) > 0:
		return nil, fmt.Errorf("%w: %s", errdefs.ErrFailedPrecondition, missingText(cache, missing)[0])
	}
	return out, nil
}

func missingText(cache string, names []string) []string {
	if len(names) == 0 {
		return nil
	}
	return []string{fmt.Sprintf("backing files not in the image cache %s on this host: %s (copy the disks whole)", cache, strings.Join(names, ", "))}
}
