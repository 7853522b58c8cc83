package virt

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"opendev.org/x/ferry/pkg/errdefs"
)

// ResidentRAM is how much of a running guest's RAM is resident on this
// host: the Rss of its QEMU process's mapping of the guest's memory (the
// one mapping whose size is the guest's RAM), read from procRoot (/proc).
// Pages the guest never touched are not resident and cost a live
// migration nothing (QEMU sends them as zero pages), while the process's
// whole resident size (balloon.rss) also counts QEMU itself — under TCG
// its translation cache, some 150 MiB: twice what an idle guest moves.
// The QEMU process is the one whose command line carries "-uuid <uuid>".
func ResidentRAM(procRoot, uuid string, ram uint64) (uint64, error) {
	if ram == 0 {
		return 0, fmt.Errorf("resident RAM of %s: %w: the guest's RAM size is unknown", uuid, errdefs.ErrInvalidArgument)
	}
	pid, err := qemuPID(procRoot, uuid)
	if err != nil {
		return 0, err
	}
	f, err := os.Open(filepath.Join(procRoot, pid, "smaps"))
	if err != nil {
		return 0, fmt.Errorf("resident RAM of %s: %w: %w", uuid, errdefs.ErrUnavailable, err)
	}
	defer f.Close()
	// The guest's RAM block is one anonymous mapping of about its size
	// (QEMU rounds and aligns it; the XML's figure can differ by a few
	// KiB): the mapping closest to it, within 1/64.
	want := ram >> 10 // smaps counts KiB
	var size, bestDiff uint64
	var rss uint64
	found := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || strings.Contains(k, " ") { // a mapping's header line: "addr-addr perms offset dev inode path"
			size = 0
			continue
		}
		n, unit, _ := strings.Cut(strings.TrimSpace(v), " ")
		kib, err := strconv.ParseUint(n, 10, 64)
		if err != nil || unit != "kB" {
			continue
		}
		switch k {
		case "Size":
			size = kib
		case "Rss":
			diff := max(size, want) - min(size, want)
			if size > 0 && diff <= want/64 && (!found || diff < bestDiff) {
				rss, bestDiff, found = kib<<10, diff, true
			}
		}
	}
	if err := sc.Err(); err != nil {
		return 0, fmt.Errorf("resident RAM of %s: %w: %w", uuid, errdefs.ErrUnavailable, err)
	}
	if !found {
		return 0, fmt.Errorf("resident RAM of %s: %w: no mapping of about %d KiB in QEMU's (pid %s) memory", uuid, errdefs.ErrNotFound, want, pid)
	}
	return min(rss, ram), nil
}

// QEMUPID is the process id of the QEMU running the domain with uuid on
// this host (procRoot: /proc).
func QEMUPID(procRoot, uuid string) (int, error) {
	s, err := qemuPID(procRoot, uuid)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(s)
}

// qemuPID finds the process whose command line has "-uuid" then uuid.
func qemuPID(procRoot, uuid string) (string, error) {
	ents, err := os.ReadDir(procRoot)
	if err != nil {
		return "", fmt.Errorf("QEMU of %s: %w: %w", uuid, errdefs.ErrUnavailable, err)
	}
	needle := []byte("\x00-uuid\x00" + uuid + "\x00")
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join(procRoot, e.Name(), "cmdline"))
		if err != nil {
			continue // gone, or not ours to read
		}
		if bytes.Contains(append(b, 0), needle) {
			return e.Name(), nil
		}
	}
	return "", fmt.Errorf("QEMU of %s: %w: no process with -uuid %s", uuid, errdefs.ErrNotFound, uuid)
}
