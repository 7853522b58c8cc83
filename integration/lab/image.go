package lab

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	_ "embed"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strings"
)

// Image is the guest's boot material, on a path every host can read.
type Image struct {
	Kernel  string // vmlinuz from Debian's linux-image package
	Initrd  string // busybox + virtio modules + guestagent
	Version string // kernel release, e.g. 6.1.0-56-amd64
}

//go:embed guest-init.sh
var initScript []byte

//go:embed qemu-tcg-wrap.sh
var tcgWrapper []byte

// virtioModules load in this order (no modules.dep in the package: depmod
// makes it at install time). The initramfs lists it in
// /lib/modules/load-order for /init.
var virtioModules = []string{"virtio_ring", "virtio", "virtio_pci_modern_dev", "virtio_pci_legacy_dev", "virtio_pci", "virtio_blk"}

func emulatorPath() string { return filepath.Join(CacheDir, "qemu-tcg-wrap") }

// buildImage takes the kernel from Debian's linux-image package (downloaded
// once into CacheDir, never installed) and builds the initramfs from the
// busybox-static binary, the virtio modules and the guest agent. It also
// installs the QEMU wrapper (finding 1 of the lab notes) as the emulator.
func buildImage(ctx context.Context, logf func(string, ...any)) (Image, error) {
	dir := filepath.Join(CacheDir, "guest")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return Image{}, err
	}
	if err := writeIfChanged(emulatorPath(), tcgWrapper, 0o755); err != nil {
		return Image{}, err
	}
	deb, err := kernelDeb(ctx, logf)
	if err != nil {
		return Image{}, err
	}
	m := regexp.MustCompile(`linux-image-(\d[^_]*-amd64)_`).FindStringSubmatch(filepath.Base(deb))
	if m == nil {
		return Image{}, fmt.Errorf("kernel package %s: no release in its name", deb)
	}
	img := Image{Version: m[1], Kernel: filepath.Join(dir, "vmlinuz-"+m[1]), Initrd: filepath.Join(dir, "initrd.img")}
	modDir := filepath.Join(dir, "modules-"+img.Version)
	if _, err := os.Stat(img.Kernel); err != nil {
		if err := extractKernel(ctx, deb, dir, img.Version); err != nil {
			return Image{}, err
		}
	}
	agent, err := buildAgent(ctx, dir)
	if err != nil {
		return Image{}, err
	}
	cpio, err := initramfs(agent, modDir)
	if err != nil {
		return Image{}, err
	}
	return img, writeIfChanged(img.Initrd, cpio, 0o644)
}

// kernelDeb returns the cached linux-image .deb, downloading the one that
// linux-image-amd64 depends on when none is cached.
func kernelDeb(ctx context.Context, logf func(string, ...any)) (string, error) {
	dir := filepath.Join(CacheDir, "deb")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	if m, _ := filepath.Glob(filepath.Join(dir, "linux-image-*-amd64_*.deb")); len(m) > 0 {
		sort.Strings(m)
		return m[len(m)-1], nil
	}
	out, err := run(ctx, "apt-cache", "depends", "linux-image-amd64")
	if err != nil {
		return "", err
	}
	pkg := regexp.MustCompile(`Depends: (linux-image-\d\S*-amd64)\b`).FindStringSubmatch(out)
	if pkg == nil {
		return "", fmt.Errorf("apt-cache depends linux-image-amd64 names no kernel (run apt-get update?): %s", out)
	}
	logf("lab: downloading %s (once)", pkg[1])
	cmd := exec.CommandContext(ctx, "apt-get", "download", pkg[1])
	cmd.Dir = dir
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("apt-get download %s: %w: %s", pkg[1], err, b)
	}
	return kernelDeb(ctx, logf)
}

func extractKernel(ctx context.Context, deb, dir, version string) error {
	tmp, err := os.MkdirTemp(dir, "extract-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	sh := fmt.Sprintf("dpkg-deb --fsys-tarfile %q | tar -x -C %q --wildcards './boot/vmlinuz-*' './lib/modules/*/kernel/drivers/virtio/*' './lib/modules/*/kernel/drivers/block/virtio_blk.ko*'", deb, tmp)
	if _, err := run(ctx, "sh", "-c", sh); err != nil {
		return err
	}
	modDir := filepath.Join(dir, "modules-"+version)
	if err := os.MkdirAll(modDir, 0o755); err != nil {
		return err
	}
	for _, mod := range virtioModules {
		m, _ := filepath.Glob(filepath.Join(tmp, "lib/modules", version, "kernel/drivers/*", mod+".ko"))
		if len(m) != 1 {
			return fmt.Errorf("module %s not found (uncompressed) in %s", mod, deb)
		}
		if err := os.Rename(m[0], filepath.Join(modDir, mod+".ko")); err != nil {
			return err
		}
	}
	return os.Rename(filepath.Join(tmp, "boot", "vmlinuz-"+version), filepath.Join(dir, "vmlinuz-"+version))
}

// buildAgent compiles the guest agent as a static binary.
func buildAgent(ctx context.Context, dir string) (string, error) {
	_, self, _, _ := runtime.Caller(0)
	out := filepath.Join(dir, "guestagent")
	goBin := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := os.Stat(goBin); err != nil {
		goBin = "go"
	}
	cmd := exec.CommandContext(ctx, goBin, "build", "-trimpath", "-o", out, "./guestagent")
	cmd.Dir = filepath.Dir(self)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build guest agent: %w: %s", err, b)
	}
	return out, nil
}

func initramfs(agent, modDir string) ([]byte, error) {
	busybox, err := os.ReadFile("/bin/busybox")
	if err != nil {
		return nil, fmt.Errorf("busybox-static: %w", err)
	}
	agentBin, err := os.ReadFile(agent)
	if err != nil {
		return nil, err
	}
	w := &cpioWriter{}
	for _, d := range []string{"bin", "dev", "proc", "sys", "lib", "lib/modules", "tmp"} {
		w.dir(d)
	}
	w.dev("dev/console", 5, 1)
	w.file("bin/busybox", busybox, 0o755)
	for _, s := range []string{"sh", "mount", "insmod", "sleep", "echo", "cat"} {
		w.symlink("bin/"+s, "busybox")
	}
	for _, mod := range virtioModules {
		b, err := os.ReadFile(filepath.Join(modDir, mod+".ko"))
		if err != nil {
			return nil, err
		}
		w.file("lib/modules/"+mod+".ko", b, 0o644)
	}
	w.file("lib/modules/load-order", []byte(strings.Join(virtioModules, "\n")+"\n"), 0o644)
	w.file("init", initScript, 0o755)
	w.file("agent", agentBin, 0o755)
	var gz bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&gz, gzip.BestSpeed)
	if _, err := zw.Write(w.finish()); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return gz.Bytes(), nil
}

func writeIfChanged(path string, b []byte, mode os.FileMode) error {
	if old, err := os.ReadFile(path); err == nil && sha256.Sum256(old) == sha256.Sum256(b) {
		return nil
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, mode); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// cpioWriter writes the "newc" format the kernel unpacks into its rootfs.
type cpioWriter struct {
	buf bytes.Buffer
	ino int
}

func (w *cpioWriter) entry(name string, mode uint32, data []byte, rmaj, rmin int) {
	w.ino++
	fmt.Fprintf(&w.buf, "070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		w.ino, mode, 0, 0, 1, 0, len(data), 0, 0, rmaj, rmin, len(name)+1, 0)
	w.buf.WriteString(name)
	w.buf.WriteByte(0)
	w.pad()
	w.buf.Write(data)
	w.pad()
}

func (w *cpioWriter) pad() {
	for w.buf.Len()%4 != 0 {
		w.buf.WriteByte(0)
	}
}

func (w *cpioWriter) dir(name string)                         { w.entry(name, 0o040755, nil, 0, 0) }
func (w *cpioWriter) file(name string, b []byte, perm uint32) { w.entry(name, 0o100000|perm, b, 0, 0) }
func (w *cpioWriter) symlink(name, target string)             { w.entry(name, 0o120777, []byte(target), 0, 0) }
func (w *cpioWriter) dev(name string, major, minor int)       { w.entry(name, 0o020600, nil, major, minor) }
func (w *cpioWriter) finish() []byte {
	w.entry("TRAILER!!!", 0, nil, 0, 0)
	return w.buf.Bytes()
}
