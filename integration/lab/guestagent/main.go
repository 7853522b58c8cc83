// Command guestagent is the program the lab guest's init runs. It proves
// liveness across a live migration and gives the migration something to chew
// on:
//
//   - every lab.hb milliseconds it prints "HB n=<counter> t=<seconds> boot=<id>
//     dirtied_mib=<total> rate_mibps=<last second>" to the console; a migration
//     preserved the guest when the counter continues with the same boot id;
//   - it dirties a working set of lab.ws MiB at lab.rate MiB/s (0 = idle,
//     -1 = as fast as it can), one byte per 4 KiB page, paced in 10 ms slices;
//   - every lab.tick milliseconds it writes "LABTICK <dev> n=<counter>
//     boot=<id>" into sector 0 of every virtio disk and prints what it wrote,
//     so a host can read the counter back from a volume's backing store;
//   - every 500 ms it reads a control block, "LABCTL ws=<MiB> rate=<MiB/s>
//     gen=<n>", at byte 4096 of disk lab.ctl (O_DIRECT, so the host's writes
//     are seen), and re-shapes the dirtier when gen changes: one booted guest
//     serves idle and dirtying tests alike.
//
// Parameters come from the kernel command line. It is built statically
// (CGO_ENABLED=0) and runs as the last step of the initramfs's /init.
package main

import (
	"bufio"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

const pageSize = 4096

type params struct {
	wsMiB   int           // working set
	rateMiB int           // MiB/s; 0 idle, -1 unlimited
	hb      time.Duration // heartbeat period
	tick    time.Duration // disk tick period
	ctl     string        // disk holding the control block ("" = none)
}

func parseCmdline(s string) params {
	p := params{wsMiB: 0, rateMiB: 0, hb: 100 * time.Millisecond, tick: 2 * time.Second}
	for _, f := range strings.Fields(s) {
		k, v, ok := strings.Cut(f, "=")
		if !ok {
			continue
		}
		if k == "lab.ctl" {
			p.ctl = v
			continue
		}
		n, err := strconv.Atoi(v)
		if err != nil {
			continue
		}
		switch k {
		case "lab.ws":
			p.wsMiB = n
		case "lab.rate":
			p.rateMiB = n
		case "lab.hb":
			p.hb = time.Duration(n) * time.Millisecond
		case "lab.tick":
			p.tick = time.Duration(n) * time.Millisecond
		}
	}
	return p
}

var (
	dirtiedPages atomic.Uint64
	out          = bufio.NewWriter(os.Stdout)
	outLock      = make(chan struct{}, 1)
)

func say(format string, a ...any) {
	outLock <- struct{}{}
	fmt.Fprintf(out, format+"\n", a...)
	out.Flush()
	<-outLock
}

func main() {
	cmd, _ := os.ReadFile("/proc/cmdline")
	p := parseCmdline(string(cmd))
	var b [8]byte
	_, _ = rand.Read(b[:])
	boot := fmt.Sprintf("%016x", binary.BigEndian.Uint64(b[:]))
	start := time.Now()
	say("AGENT START boot=%s ws_mib=%d rate_mibps=%d hb_ms=%d", boot, p.wsMiB, p.rateMiB, p.hb.Milliseconds())

	d := &dirtier{}
	d.set(p.wsMiB, p.rateMiB)
	go tickDisks(boot, p.tick)
	if p.ctl != "" {
		go control("/dev/"+p.ctl, d)
	}

	t := time.NewTicker(p.hb)
	defer t.Stop()
	var n uint64
	var lastPages uint64
	lastAt := time.Now()
	var rate float64
	for now := range t.C {
		pages := dirtiedPages.Load()
		if dt := now.Sub(lastAt); dt >= time.Second {
			rate = float64(pages-lastPages) * pageSize / (1 << 20) / dt.Seconds()
			lastPages, lastAt = pages, now
		}
		say("HB n=%d t=%.1f boot=%s dirtied_mib=%d rate_mibps=%.1f", n, time.Since(start).Seconds(), boot,
			pages*pageSize>>20, rate)
		n++
	}
}

// dirtier writes one byte per page over a working set at a rate; set
// replaces the running one.
type dirtier struct {
	stop chan struct{}
	done chan struct{}
}

func (d *dirtier) set(wsMiB, rateMiB int) {
	if d.stop != nil {
		close(d.stop)
		<-d.done
		d.stop = nil
	}
	if wsMiB <= 0 || rateMiB == 0 {
		return
	}
	d.stop, d.done = make(chan struct{}), make(chan struct{})
	go dirty(wsMiB, rateMiB, d.stop, d.done)
}

func dirty(wsMiB, rateMiB int, stop, done chan struct{}) {
	defer close(done)
	size := wsMiB << 20
	mem, err := syscall.Mmap(-1, 0, size, syscall.PROT_READ|syscall.PROT_WRITE,
		syscall.MAP_PRIVATE|syscall.MAP_ANONYMOUS|syscall.MAP_POPULATE)
	if err != nil {
		say("DIRTIER error mmap %d MiB: %v", wsMiB, err)
		return
	}
	defer syscall.Munmap(mem)
	pages := size / pageSize
	say("DIRTIER start ws_mib=%d rate_mibps=%d pages=%d", wsMiB, rateMiB, pages)
	const slice = 10 * time.Millisecond
	perSlice := pages // unlimited: the whole set per slice
	if rateMiB > 0 {
		perSlice = max(1, rateMiB<<20/pageSize/int(time.Second/slice))
	}
	t := time.NewTicker(slice)
	defer t.Stop()
	pos := 0
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		for i := 0; i < perSlice; i++ {
			mem[pos*pageSize]++
			pos++
			if pos == pages {
				pos = 0
			}
		}
		dirtiedPages.Add(uint64(perSlice))
	}
}

// control polls the control block and re-shapes the dirtier.
func control(dev string, d *dirtier) {
	buf, err := syscall.Mmap(-1, 0, 4096, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_PRIVATE|syscall.MAP_ANONYMOUS)
	if err != nil {
		say("CONTROL error: %v", err)
		return
	}
	last := ""
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	for range t.C {
		fd, err := syscall.Open(dev, syscall.O_RDONLY|syscall.O_DIRECT, 0)
		if err != nil {
			continue
		}
		n, err := syscall.Pread(fd, buf, 4096)
		syscall.Close(fd)
		if err != nil || n < 64 {
			continue
		}
		line, _, _ := strings.Cut(string(buf[:256]), "\n")
		if !strings.HasPrefix(line, "LABCTL ") || line == last {
			continue
		}
		last = line
		var ws, rate, gen int
		if _, err := fmt.Sscanf(line, "LABCTL ws=%d rate=%d gen=%d", &ws, &rate, &gen); err != nil {
			say("CONTROL bad line %q", line)
			continue
		}
		d.set(ws, rate)
		say("DIRTIER set ws_mib=%d rate_mibps=%d gen=%d", ws, rate, gen)
	}
}

// tickDisks writes a counter into sector 0 of every virtio disk.
func tickDisks(boot string, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	var n uint64
	for range t.C {
		for _, dev := range disks() {
			line := fmt.Sprintf("LABTICK %s n=%d boot=%s\n", dev, n, boot)
			if err := writeSector0("/dev/"+dev, line); err != nil {
				say("TICK %s n=%d error=%q", dev, n, err.Error())
				continue
			}
			say("TICK %s n=%d ok", dev, n)
		}
		n++
	}
}

func disks() []string {
	m, _ := filepath.Glob("/sys/block/vd*")
	var ds []string
	for _, p := range m {
		ds = append(ds, filepath.Base(p))
	}
	sort.Strings(ds)
	return ds
}

func writeSector0(path, line string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|syscall.O_SYNC, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	buf := make([]byte, 512)
	copy(buf, line)
	if _, err := f.WriteAt(buf, 0); err != nil {
		return err
	}
	return f.Sync()
}
