package virt

import (
	"context"
	"fmt"
	"io"

	"opendev.org/x/ferry/pkg/errdefs"
)

// peekChunk is how much one block-peek call reads: a quarter of libvirt's
// 4 MiB limit per call, so that each call stays short under the Query timeout.
const peekChunk = 1 << 20

// ReadDisk copies the file behind one of a domain's disks (target dev, e.g.
// hdd) into w, as the host stores it, through libvirt's block-peek: how a
// destination fetches a read-only disk such as a config drive from the
// source host with nothing but the libvirt connection. A disk larger than
// max bytes is refused before any byte is read. It returns the bytes copied.
func (c *Conn) ReadDisk(ctx context.Context, name, target string, w io.Writer, max int64) (int64, error) {
	d, err := c.lookup(ctx, name)
	if err != nil {
		return 0, err
	}
	size, err := do(c, ctx, c.timeouts.Query, "block-info", "block info "+name+" "+target, func() (uint64, error) {
		_, _, physical, err := c.l.DomainGetBlockInfo(d, target, 0)
		return physical, err
	})
	if err != nil {
		return 0, err
	}
	if int64(size) > max {
		return 0, fmt.Errorf("read disk %s of %s: %w: %d bytes, more than %d", target, name, errdefs.ErrFailedPrecondition, size, max)
	}
	var n int64
	for off := uint64(0); off < size; {
		want := uint32(min(size-off, peekChunk))
		b, err := do(c, ctx, c.timeouts.Query, "block-peek", fmt.Sprintf("block peek %s %s at %d", name, target, off), func() ([]byte, error) {
			return c.l.DomainBlockPeek(d, target, off, want, 0)
		})
		if err != nil {
			return n, err
		}
		if len(b) != int(want) {
			return n, fmt.Errorf("block peek %s %s at %d: %w: %d bytes, asked for %d", name, target, off, errdefs.ErrUnavailable, len(b), want)
		}
		if _, err := w.Write(b); err != nil {
			return n, err
		}
		n += int64(len(b))
		off += uint64(len(b))
	}
	return n, nil
}
