package openstack

import (
	"context"
	"fmt"
	"io"
	"time"

	gopenstack "github.com/gophercloud/gophercloud/v2/openstack"
	"github.com/gophercloud/gophercloud/v2/openstack/image/v2/imagedata"
	"github.com/gophercloud/gophercloud/v2/openstack/image/v2/images"
	"github.com/sirupsen/logrus"

	"opendev.org/x/ferry/pkg/errdefs"
)

// Glance reads image data: a native-mode destination fetches an
// instance's kernel and ramdisk images, which live in the instance
// directory and which no migration stream carries, as nova-compute's
// pre_live_migration does.
type Glance struct {
	s *session
}

// NewGlance returns a client; it does not connect yet.
func NewGlance(a Auth, timeout time.Duration, log *logrus.Entry) *Glance {
	return &Glance{s: newSession(api{kind: "image", version: "v2/", fromCatalog: gopenstack.NewImageV2}, a, timeout, log)}
}

// Fetch copies image id's data into w and returns its disk format as
// Glance records it (raw, qcow2, …; what the caller must read it as,
// never a format to probe) and the bytes copied. An image larger than max
// bytes (by its record, or by what arrives) is refused with
// errdefs.ErrFailedPrecondition; one Glance does not know, with
// errdefs.ErrNotFound.
func (g *Glance) Fetch(ctx context.Context, id string, w io.Writer, max int64) (string, int64, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*g.s.timeout)
	defer cancel()
	fail := func(what string, err error) (string, int64, error) {
		return "", 0, fmt.Errorf("glance: %s image %s: %w", what, id, err)
	}
	sc, err := g.s.service(ctx)
	if err != nil {
		return fail("read", err)
	}
	img, err := images.Get(ctx, sc, id).Extract()
	if err != nil {
		return fail("read", classify(err))
	}
	if img.SizeBytes > max {
		return fail("fetch", fmt.Errorf("%w: %d bytes, more than %d", errdefs.ErrFailedPrecondition, img.SizeBytes, max))
	}
	body, err := imagedata.Download(ctx, sc, id).Extract()
	if err != nil {
		return fail("download", classify(err))
	}
	defer body.Close()
	n, err := io.Copy(w, io.LimitReader(body, max+1))
	switch {
	case err != nil:
		return "", n, fmt.Errorf("glance: download image %s: %w: %w", id, errdefs.ErrUnavailable, err)
	case n > max:
		return "", n, fmt.Errorf("glance: download image %s: %w: more than %d bytes", id, errdefs.ErrFailedPrecondition, max)
	case img.SizeBytes > 0 && n != img.SizeBytes:
		return "", n, fmt.Errorf("glance: download image %s: %w: %d bytes, the image has %d", id, errdefs.ErrUnavailable, n, img.SizeBytes)
	}
	return img.DiskFormat, n, nil
}
