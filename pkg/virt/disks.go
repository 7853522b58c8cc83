package virt

import (
	"fmt"

	"libvirt.org/go/libvirtxml"

	"opendev.org/x/ferry/pkg/errdefs"
)

// Disk is one <disk> of a domain, as far as migration cares.
type Disk struct {
	Target    string // target dev: vda
	Device    string // disk, cdrom, floppy, lun
	Type      string // source type: file, block, network, volume, dir
	Source    string // file path, block device, or protocol/name for network disks
	Format    string // driver type: qcow2, raw
	Serial    string // Nova sets a volume's serial to its volume id
	ReadOnly  bool
	Shareable bool
}

// ParseDisks lists the disks of a domain XML document.
func ParseDisks(xml string) ([]Disk, error) {
	var d libvirtxml.Domain
	if err := d.Unmarshal(xml); err != nil {
		return nil, fmt.Errorf("parse domain xml: %w: %w", errdefs.ErrInvalidArgument, err)
	}
	if d.Devices == nil {
		return nil, nil
	}
	var out []Disk
	for _, x := range d.Devices.Disks {
		disk := Disk{Device: x.Device, Serial: x.Serial, ReadOnly: x.ReadOnly != nil, Shareable: x.Shareable != nil}
		if disk.Device == "" {
			disk.Device = "disk"
		}
		if x.Target != nil {
			disk.Target = x.Target.Dev
		}
		if x.Driver != nil {
			disk.Format = x.Driver.Type
		}
		if s := x.Source; s != nil {
			switch {
			case s.File != nil:
				disk.Type, disk.Source = "file", s.File.File
			case s.Block != nil:
				disk.Type, disk.Source = "block", s.Block.Dev
			case s.Network != nil:
				disk.Type, disk.Source = "network", s.Network.Protocol+"/"+s.Network.Name
			case s.Volume != nil:
				disk.Type, disk.Source = "volume", s.Volume.Pool+"/"+s.Volume.Volume
			case s.Dir != nil:
				disk.Type, disk.Source = "dir", s.Dir.Dir
			}
		}
		out = append(out, disk)
	}
	return out, nil
}

// Guest is what migration pre-checks read from a domain's XML.
type Guest struct {
	Type   string // domain type: kvm, qemu
	CPUXML string // the <cpu> element, for CompareCPU ("" when the domain has none)
	Model  string // CPU model, for messages
	Disks  []Disk
	// Memory is the guest's RAM in bytes (<currentMemory>, else <memory>);
	// 0 when the XML has neither.
	Memory uint64
}

// ParseGuest reads the domain type, CPU definition and disks.
func ParseGuest(xml string) (Guest, error) {
	var d libvirtxml.Domain
	if err := d.Unmarshal(xml); err != nil {
		return Guest{}, fmt.Errorf("parse domain xml: %w: %w", errdefs.ErrInvalidArgument, err)
	}
	g := Guest{Type: d.Type}
	switch {
	case d.CurrentMemory != nil:
		g.Memory = memBytes(d.CurrentMemory.Value, d.CurrentMemory.Unit)
	case d.Memory != nil:
		g.Memory = memBytes(d.Memory.Value, d.Memory.Unit)
	}
	if d.CPU != nil && (d.CPU.Model != nil || len(d.CPU.Features) > 0) {
		cpu := *d.CPU
		cpu.Topology, cpu.Numa, cpu.Cache = nil, nil, nil
		s, err := cpu.Marshal()
		if err != nil {
			return Guest{}, fmt.Errorf("cpu xml: %w", err)
		}
		g.CPUXML = s
		if cpu.Model != nil {
			g.Model = cpu.Model.Value
		}
	}
	var err error
	g.Disks, err = ParseDisks(xml)
	return g, err
}

// memBytes is a libvirt memory size in bytes; the unit defaults to KiB
// (libvirt's formatdomain "Memory Allocation"; an unknown unit reads as KiB).
func memBytes(v uint, unit string) uint64 {
	mul := map[string]uint64{"b": 1, "bytes": 1, "KB": 1e3, "k": 1 << 10, "KiB": 1 << 10, "MB": 1e6, "M": 1 << 20, "MiB": 1 << 20,
		"GB": 1e9, "G": 1 << 30, "GiB": 1 << 30, "TB": 1e12, "T": 1 << 40, "TiB": 1 << 40}[unit]
	if mul == 0 {
		mul = 1 << 10
	}
	return uint64(v) * mul
}
