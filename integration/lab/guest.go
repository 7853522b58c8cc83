package lab

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"text/template"
	"time"

	"opendev.org/x/ferry/pkg/disks"
	"opendev.org/x/ferry/pkg/virt"
)

// GuestSpec describes a lab guest. Zero fields take the defaults.
type GuestSpec struct {
	Name         string // domain name; default "lab-guest"
	MemMiB       int    // RAM; default 256
	WSMiB        int    // dirtied working set; 0 = idle
	RateMiBps    int    // dirty rate; -1 = as fast as it can
	LocalDiskMiB int    // virtual size of the local qcow2 (vda); default 64
	DefineOnly   bool   // define the domain, do not boot it
	CPUModel     string // guest CPU model; default qemu64
	MissingLUN   bool   // add a block volume whose device exists on no host
	// BaseMiB > 0 makes vda a qcow2 overlay on a raw base image of that
	// size in InstancesPath/_base, the way Nova's image cache lays disks
	// out. The base is filled with BasePattern and put on the starting host
	// only; PutBase copies it to another.
	BaseMiB int
	// ConfigDrive attaches a read-only cdrom (hdc) backed by a 1 MiB raw
	// file in the instance directory, as Nova attaches a config drive.
	ConfigDrive bool
}

// BasePattern is the byte a guest's base image is filled with; TopPattern
// the byte the overlay holds at TopMark, written before the guest boots.
const (
	BasePattern = 0x5a
	TopPattern  = 0xa5
)

// TopMark is where (MiB offset and length) a guest's overlay holds data of
// its own, past the end of its base: what an incremental copy must move.
func (g *Guest) TopMark() (offMiB, nMiB int) { return g.Spec.BaseMiB + 8, 4 }

// Guest is a booted lab guest with a local disk (vda, in the instances
// directory), a block volume (vdb: a loop device, like a pre-presented SAN
// LUN) and a network volume (vdc: an NBD export on the storage address).
type Guest struct {
	Spec          GuestSpec
	UUID          string
	LocalDisk     string // path inside every host (InstancesPath/<uuid>/disk)
	LoopDev       string // /dev/loopN, the same device on every host
	LoopSerial    string // volume id, the <serial> of vdb
	NBDFile       string // backing file of the NBD export
	NBDSerial     string // volume id, the <serial> of vdc
	NBDPort       int
	loopBacking   string
	nbdExportName string
	ctlGen        int
}

// Volume serials: the lab's stand-ins for Cinder volume ids.
const (
	loopVolumeID = "c1d00000-0000-4000-8000-0000000000b1"
	nbdVolumeID  = "c1d00000-0000-4000-8000-0000000000b2"
)

var domainTmpl = template.Must(template.New("domain").Parse(`<domain type='qemu'>
  <name>{{.Spec.Name}}</name>
  <uuid>{{.UUID}}</uuid>
  <memory unit='MiB'>{{.Spec.MemMiB}}</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{{.Kernel}}</kernel>
    <initrd>{{.Initrd}}</initrd>
    <cmdline>console=ttyS0 panic=-1 loglevel=4 lab.ws={{.Spec.WSMiB}} lab.rate={{.Spec.RateMiBps}} lab.hb=100 lab.ctl=vdc</cmdline>
  </os>
  <cpu mode='custom' match='exact'><model fallback='forbid'>{{.CPU}}</model></cpu>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>{{.Emulator}}</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='{{.LocalDisk}}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='block' device='disk'>
      <driver name='qemu' type='raw' cache='none' io='native'/>
      <source dev='{{.LoopDev}}'/>
      <target dev='vdb' bus='virtio'/>
      <serial>{{.LoopSerial}}</serial>
    </disk>
    <disk type='network' device='disk'>
      <driver name='qemu' type='raw' cache='none'/>
      <source protocol='nbd' name='{{.NBDExport}}'>
        <host name='{{.StorageAddr}}' port='{{.NBDPort}}'/>
      </source>
      <target dev='vdc' bus='virtio'/>
      <serial>{{.NBDSerial}}</serial>
    </disk>
{{- if .Spec.ConfigDrive}}
    <disk type='file' device='cdrom'>
      <driver name='qemu' type='raw'/>
      <source file='{{.ConfigDrive}}'/>
      <target dev='hdc' bus='ide'/>
      <readonly/>
    </disk>
{{- end}}
{{- if .Spec.MissingLUN}}
    <disk type='block' device='disk'>
      <driver name='qemu' type='raw' cache='none'/>
      <source dev='/dev/disk/by-id/ferry-lab-missing-lun'/>
      <target dev='vdd' bus='virtio'/>
      <serial>c1d00000-0000-4000-8000-0000000000b3</serial>
    </disk>
{{- end}}
    <serial type='file'>
      <source path='/var/log/libvirt/qemu/{{.Spec.Name}}-serial.log' append='on'/>
      <target port='0'/>
    </serial>
    <memballoon model='none'/>
  </devices>
</domain>
`))

// DomainXML renders the guest's domain definition.
func (l *Lab) DomainXML(g *Guest) (string, error) {
	var b bytes.Buffer
	err := domainTmpl.Execute(&b, map[string]any{
		"Spec": g.Spec, "UUID": g.UUID, "Kernel": l.Image.Kernel, "Initrd": l.Image.Initrd,
		"Emulator": emulatorPath(), "LocalDisk": g.LocalDisk, "LoopDev": g.LoopDev, "LoopSerial": g.LoopSerial,
		"NBDExport": g.nbdExportName, "StorageAddr": storageAddr, "NBDPort": g.NBDPort, "NBDSerial": g.NBDSerial,
		"CPU": cpuModel(g.Spec.CPUModel), "ConfigDrive": g.ConfigDrive(),
	})
	return b.String(), err
}

// StartGuest creates the guest's disks and volumes, defines it on h and boots
// it, then waits for its first heartbeat.
func (l *Lab) StartGuest(ctx context.Context, h *Host, spec GuestSpec) (*Guest, error) {
	if spec.Name == "" {
		spec.Name = "lab-guest"
	}
	if spec.MemMiB == 0 {
		spec.MemMiB = 256
	}
	if spec.LocalDiskMiB == 0 {
		spec.LocalDiskMiB = 64
	}
	l.guests++
	g := &Guest{
		Spec:          spec,
		UUID:          fmt.Sprintf("6a3e0000-0000-4000-8000-%012x", l.guests),
		LoopSerial:    loopVolumeID,
		NBDSerial:     nbdVolumeID,
		NBDPort:       10808 + l.guests,
		nbdExportName: spec.Name + "-vol",
	}
	g.LocalDisk = filepath.Join(InstancesPath, g.UUID, "disk")
	if spec.BaseMiB > 0 {
		if err := l.makeOverlay(ctx, h, g); err != nil {
			return nil, err
		}
	} else if err := l.PrecreateDisk(ctx, h, g); err != nil {
		return nil, err
	}
	if spec.ConfigDrive {
		if err := makeConfigDrive(h.Path(g.ConfigDrive())); err != nil {
			return nil, err
		}
	}
	if err := l.makeVolumes(ctx, g); err != nil {
		return nil, err
	}
	xml, err := l.DomainXML(g)
	if err != nil {
		return nil, err
	}
	c, err := h.Dial(ctx)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	t := time.Now()
	if spec.DefineOnly {
		if err := c.Define(ctx, xml); err != nil {
			return nil, fmt.Errorf("define guest %s on %s: %w", spec.Name, h.Name, err)
		}
		return g, nil
	}
	if err := c.DefineAndStart(ctx, xml); err != nil {
		return nil, fmt.Errorf("start guest %s on %s: %w", spec.Name, h.Name, err)
	}
	if _, err := l.WaitHeartbeats(ctx, h, g, 1, 90*time.Second); err != nil {
		return nil, err
	}
	l.logf("lab: guest %s on host %s: first heartbeat %.1fs after start", spec.Name, h.Name, time.Since(t).Seconds())
	return g, nil
}

// PrecreateDisk creates the guest's local disk on h (an empty qcow2 of the
// guest's virtual size), as a migration destination needs before a full copy.
func (l *Lab) PrecreateDisk(ctx context.Context, h *Host, g *Guest) error {
	p := h.Path(g.LocalDisk)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	_ = os.Remove(p)
	_, err := run(ctx, "qemu-img", "create", "-q", "-f", "qcow2", p, fmt.Sprintf("%dM", g.Spec.LocalDiskMiB))
	return err
}

// Base is the path (inside every host) of the guest's base image.
func (g *Guest) Base() string {
	return filepath.Join(InstancesPath, disks.CacheSubdir, g.Spec.Name+"-base")
}

// ConfigDrive is the path (inside every host) of the guest's config drive.
func (g *Guest) ConfigDrive() string { return filepath.Join(InstancesPath, g.UUID, "disk.config") }

// makeConfigDrive writes 1 MiB that no two offsets repeat within: a copy
// that drops, repeats or reorders a chunk does not compare equal.
func makeConfigDrive(path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	b := make([]byte, 1<<20)
	for i := 0; i < len(b); i += 8 {
		binary.LittleEndian.PutUint64(b[i:], uint64(i)*0x9E3779B97F4A7C15)
	}
	return os.WriteFile(path, b, 0o644)
}

// ConfigDriveSum is the SHA-256 of the guest's config drive file on h.
func (g *Guest) ConfigDriveSum(h *Host) (string, error) {
	b, err := os.ReadFile(h.Path(g.ConfigDrive()))
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("%x", sha256.Sum256(b)), nil
}

// makeOverlay writes the guest's base on h and vda as an overlay on it.
func (l *Lab) makeOverlay(ctx context.Context, h *Host, g *Guest) error {
	base := h.Path(g.Base())
	if err := os.MkdirAll(filepath.Dir(base), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(base, bytes.Repeat([]byte{BasePattern}, g.Spec.BaseMiB<<20), 0o644); err != nil {
		return err
	}
	p := h.Path(g.LocalDisk)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	_ = os.Remove(p)
	// -u: the backing path is the in-host one, which this (root) namespace
	// does not resolve; the size is given, so qemu-img need not open it.
	if _, err := run(ctx, "qemu-img", "create", "-q", "-u", "-f", "qcow2", "-b", g.Base(), "-F", "raw", p, fmt.Sprintf("%dM", g.Spec.LocalDiskMiB)); err != nil {
		return err
	}
	off, n := g.TopMark()
	if off+n > g.Spec.LocalDiskMiB {
		return fmt.Errorf("guest %s: a %d MiB disk has no room for its top-layer mark at %d+%d MiB", g.Spec.Name, g.Spec.LocalDiskMiB, off, n)
	}
	out, err := h.Run(ctx, "qemu-io", "-f", "qcow2", "-c", fmt.Sprintf("write -P %d %dM %dM", TopPattern, off, n), g.LocalDisk)
	if err != nil {
		return fmt.Errorf("write the top-layer mark: %w: %s", err, out)
	}
	return nil
}

// PutBase copies the guest's base image to h (as an image cache that
// already holds the guest's image would have it).
func (l *Lab) PutBase(from, to *Host, g *Guest) error {
	b, err := os.ReadFile(from.Path(g.Base()))
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(to.Path(g.Base())), 0o755); err != nil {
		return err
	}
	return os.WriteFile(to.Path(g.Base()), b, 0o644)
}

// RemoveBase deletes the guest's base image from h.
func (l *Lab) RemoveBase(h *Host, g *Guest) error { return os.Remove(h.Path(g.Base())) }

// ReadsPattern checks, inside h's mount namespace, that the guest's local
// disk on h reads the byte pattern at [off, off+n) MiB: through the backing
// chain for an overlay, from the image itself after a full copy.
func (l *Lab) ReadsPattern(ctx context.Context, h *Host, g *Guest, pattern byte, offMiB, nMiB int) error {
	out, err := h.Run(ctx, "qemu-io", "-r", "-U", "-f", "qcow2", "-c",
		fmt.Sprintf("read -P %d %dM %dM", pattern, offMiB, nMiB), g.LocalDisk)
	if err != nil || !strings.Contains(out, "read ") || strings.Contains(out, "fail") {
		return fmt.Errorf("%s on %s does not read pattern %#x at %d+%d MiB: %v: %s", g.LocalDisk, h.Name, pattern, offMiB, nMiB, err, out)
	}
	return nil
}

// ImageBacking returns the backing file named in the header of the guest's
// local disk on h ("" for a flat image).
func (g *Guest) ImageBacking(ctx context.Context, h *Host) (string, error) {
	out, err := run(ctx, "qemu-img", "info", "-U", "--output=json", h.Path(g.LocalDisk))
	if err != nil {
		return "", err
	}
	var info struct {
		Backing string `json:"backing-filename"`
	}
	if err := json.Unmarshal([]byte(out), &info); err != nil {
		return "", err
	}
	return info.Backing, nil
}

func (l *Lab) makeVolumes(ctx context.Context, g *Guest) error {
	dir := filepath.Join(WorkDir, "volumes")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	g.loopBacking = filepath.Join(dir, g.Spec.Name+"-block.raw")
	g.NBDFile = filepath.Join(dir, g.Spec.Name+"-nbd.raw")
	for _, f := range []string{g.loopBacking, g.NBDFile} {
		if err := os.WriteFile(f, nil, 0o644); err != nil {
			return err
		}
		if err := os.Truncate(f, 16<<20); err != nil {
			return err
		}
	}
	out, err := run(ctx, "losetup", "--find", "--show", g.loopBacking)
	if err != nil {
		return err
	}
	g.LoopDev = strings.TrimSpace(out)
	if err := l.rec.add(func(r *record) { r.Loops = append(r.Loops, loopRec{Dev: g.LoopDev, Backing: g.loopBacking}) }); err != nil {
		return err
	}
	logPath := filepath.Join(WorkDir, g.Spec.Name+"-nbd.log")
	logf, err := os.Create(logPath)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command("ip", "netns", "exec", switchNetns, "qemu-nbd", "--persistent", "--shared=8",
		"--format=raw", "--cache=writethrough", "--bind="+storageAddr, fmt.Sprintf("--port=%d", g.NBDPort),
		"--export-name="+g.nbdExportName, g.NBDFile)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	pid := cmd.Process.Pid
	l.procs.Add(1)
	go func() { defer l.procs.Done(); _ = cmd.Wait() }()
	if err := l.rec.add(func(r *record) { r.Procs = append(r.Procs, procRec{PID: pid, Comm: "qemu-nbd"}) }); err != nil {
		return err
	}
	// Ready when it listens.
	for i := 0; i < 100; i++ {
		if out, _ := run(ctx, "ip", "netns", "exec", switchNetns, "ss", "-Hltn", fmt.Sprintf("sport = :%d", g.NBDPort)); strings.TrimSpace(out) != "" {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	b, _ := os.ReadFile(logPath)
	return fmt.Errorf("qemu-nbd did not listen on %s:%d: %s", storageAddr, g.NBDPort, b)
}

// Beat is one heartbeat line.
type Beat struct {
	N       uint64
	Boot    string
	Dirtied uint64  // MiB dirtied since boot
	Rate    float64 // MiB/s over the last second
}

var beatRE = regexp.MustCompile(`^HB n=(\d+) t=\S+ boot=([0-9a-f]+) dirtied_mib=(\d+) rate_mibps=([0-9.]+)$`)

// SerialLog is the guest's console log on host h (root-namespace path).
func (g *Guest) SerialLog(h *Host) string {
	return filepath.Join(h.LogDir(), "qemu", g.Spec.Name+"-serial.log")
}

// Heartbeats parses every complete heartbeat line the guest printed on h.
// A line cut by a migration (its first bytes on the source, the rest on the
// destination) does not parse and is skipped.
func (g *Guest) Heartbeats(h *Host) ([]Beat, error) { return g.heartbeatsFrom(h, 0) }

// heartbeatsFrom parses the console log from byte offset off on (a log is
// appended to when the guest comes back to a host it ran on before).
func (g *Guest) heartbeatsFrom(h *Host, off int64) ([]Beat, error) {
	f, err := os.Open(g.SerialLog(h))
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if _, err := f.Seek(off, 0); err != nil {
		return nil, err
	}
	var beats []Beat
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if b, ok := ParseBeat(sc.Text()); ok {
			beats = append(beats, b)
		}
	}
	return beats, sc.Err()
}

// ParseBeat parses one console line; ok is false for anything but a
// complete heartbeat line.
func ParseBeat(line string) (b Beat, ok bool) {
	m := beatRE.FindStringSubmatch(strings.TrimRight(line, "\r"))
	if m == nil {
		return Beat{}, false
	}
	n, _ := strconv.ParseUint(m[1], 10, 64)
	d, _ := strconv.ParseUint(m[3], 10, 64)
	r, _ := strconv.ParseFloat(m[4], 64)
	return Beat{N: n, Boot: m[2], Dirtied: d, Rate: r}, true
}

// WaitHeartbeats waits until the guest has printed at least n heartbeats on h.
func (l *Lab) WaitHeartbeats(ctx context.Context, h *Host, g *Guest, n int, timeout time.Duration) ([]Beat, error) {
	deadline := time.Now().Add(timeout)
	for {
		b, err := g.Heartbeats(h)
		if err != nil {
			return nil, err
		}
		if len(b) >= n {
			return b, nil
		}
		if time.Now().After(deadline) {
			tail, _ := os.ReadFile(g.SerialLog(h))
			if len(tail) > 2000 {
				tail = tail[len(tail)-2000:]
			}
			return b, fmt.Errorf("guest %s on %s: %d of %d heartbeats after %s; console tail:\n%s", g.Spec.Name, h.Name, len(b), n, timeout, tail)
		}
		select {
		case <-ctx.Done():
			return b, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Continuity checks that the destination's heartbeats continue the
// source's: same boot id, counter going on (a gap of up to three beats is
// allowed for a line cut at the switch-over and the pause itself), no reboot.
func Continuity(src, dst []Beat) error {
	if len(src) == 0 || len(dst) == 0 {
		return fmt.Errorf("heartbeat: %d beats on the source, %d on the destination", len(src), len(dst))
	}
	last, first := src[len(src)-1], dst[0]
	for _, b := range dst {
		if b.Boot != last.Boot {
			return fmt.Errorf("heartbeat: boot id %s on the destination, %s on the source: the guest rebooted", b.Boot, last.Boot)
		}
	}
	if first.N <= last.N || first.N > last.N+3+uint64(len(src)/1000) {
		return fmt.Errorf("heartbeat: source ended at n=%d, destination began at n=%d", last.N, first.N)
	}
	for i := 1; i < len(dst); i++ {
		if dst[i].N != dst[i-1].N+1 {
			return fmt.Errorf("heartbeat: destination jumped from n=%d to n=%d", dst[i-1].N, dst[i].N)
		}
	}
	return nil
}

// Tick is the last counter the guest wrote into a volume's sector 0.
type Tick struct {
	N    uint64
	Boot string
}

var tickRE = regexp.MustCompile(`^LABTICK (\S+) n=(\d+) boot=([0-9a-f]+)`)

// VolumeTicks reads the counters from the backing stores of the block volume
// (vdb) and the network volume (vdc).
func (g *Guest) VolumeTicks() (block, network Tick, err error) {
	read := func(path string) (Tick, error) {
		f, err := os.Open(path)
		if err != nil {
			return Tick{}, err
		}
		defer f.Close()
		buf := make([]byte, 512)
		if _, err := f.ReadAt(buf, 0); err != nil {
			return Tick{}, err
		}
		m := tickRE.FindSubmatch(buf)
		if m == nil {
			return Tick{}, nil
		}
		n, _ := strconv.ParseUint(string(m[2]), 10, 64)
		return Tick{N: n, Boot: string(m[3])}, nil
	}
	if block, err = read(g.loopBacking); err != nil {
		return
	}
	network, err = read(g.NBDFile)
	return
}

// SetDirty re-shapes the running guest's dirtier (working set and rate; a
// zero rate makes it idle) through the control block on its network volume,
// and waits until the guest, running on h, confirms.
func (l *Lab) SetDirty(ctx context.Context, h *Host, g *Guest, wsMiB, rateMiBps int) error {
	g.ctlGen++
	line := fmt.Sprintf("LABCTL ws=%d rate=%d gen=%d\n", wsMiB, rateMiBps, g.ctlGen)
	f, err := os.OpenFile(g.NBDFile, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	buf := make([]byte, 4096)
	copy(buf, line)
	_, err = f.WriteAt(buf, 4096)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	want := fmt.Sprintf("DIRTIER set ws_mib=%d rate_mibps=%d gen=%d", wsMiB, rateMiBps, g.ctlGen)
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if b, _ := os.ReadFile(g.SerialLog(h)); strings.Contains(string(b), want) {
			g.Spec.WSMiB, g.Spec.RateMiBps = wsMiB, rateMiBps
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	return fmt.Errorf("guest %s on %s did not confirm %q within 30s", g.Spec.Name, h.Name, want)
}

// LogOffset is the size of the guest's console log on h, to read only what
// comes after it.
func (g *Guest) LogOffset(h *Host) int64 { return fileSize(g.SerialLog(h)) }

// BeatsAfter waits for n heartbeats printed on h after byte offset off.
func (l *Lab) BeatsAfter(ctx context.Context, h *Host, g *Guest, off int64, n int, timeout time.Duration) ([]Beat, error) {
	return l.waitBeatsFrom(ctx, h, g, off, n, timeout)
}

func cpuModel(m string) string {
	if m == "" {
		return "qemu64"
	}
	return m
}

// Where returns the host the guest runs on and the other one (two-host
// labs), or an error when it runs on none or on both.
func (l *Lab) Where(ctx context.Context, g *Guest) (from, to *Host, err error) {
	var running []*Host
	for _, h := range l.Hosts {
		c, err := h.Dial(ctx)
		if err != nil {
			return nil, nil, err
		}
		st, err := c.DomainState(ctx, g.Spec.Name)
		c.Close()
		if err == nil && st.State == virt.StateRunning {
			running = append(running, h)
		}
	}
	if len(running) != 1 || len(l.Hosts) != 2 {
		return nil, nil, fmt.Errorf("guest %s runs on %d of %d hosts", g.Spec.Name, len(running), len(l.Hosts))
	}
	for _, h := range l.Hosts {
		if h != running[0] {
			return running[0], h, nil
		}
	}
	return nil, nil, fmt.Errorf("unreachable")
}

// WaitTicks waits until the guest has written its counter into both
// volumes at least once (the first tick comes 2 s after boot, later on a
// loaded machine).
func (l *Lab) WaitTicks(ctx context.Context, g *Guest, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		b, n, err := g.VolumeTicks()
		if err == nil && b.Boot != "" && n.Boot != "" {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("guest %s: no tick on both volumes within %s (block %+v, network %+v, %v)", g.Spec.Name, timeout, b, n, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}
