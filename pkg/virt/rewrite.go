package virt

import (
	"bytes"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"

	"libvirt.org/go/libvirtxml"

	"opendev.org/x/ferry/pkg/errdefs"
)

// Interface is one <interface> of a domain, as far as moving it cares.
type Interface struct {
	MAC    string // lower case
	Type   string // bridge, ethernet, direct, hostdev, vhostuser, network, …
	Bridge string // <source bridge> of a bridge interface
	Target string // <target dev>
}

// DomainFacts is what a companion-mode pre-check reads from the guest's
// XML: its interfaces, and what in it only Nova's own XML rewrite knows how
// to carry to another host.
type DomainFacts struct {
	Interfaces []Interface
	// Blockers name the guest's features whose XML depends on the host it
	// runs on (pinned CPUs, NUMA placement, huge pages, host devices, a
	// serial console's TCP port, vTPM, persistent memory) or interfaces
	// other than a Linux bridge: a migration that copied them unchanged
	// would start a guest that does not fit the destination.
	Blockers []string
}

// ReadFacts reads a domain XML's interfaces and blockers.
func ReadFacts(doc string) (DomainFacts, error) {
	var d libvirtxml.Domain
	if err := d.Unmarshal(doc); err != nil {
		return DomainFacts{}, fmt.Errorf("parse domain xml: %w: %w", errdefs.ErrInvalidArgument, err)
	}
	var f DomainFacts
	block := func(format string, a ...any) { f.Blockers = append(f.Blockers, fmt.Sprintf(format, a...)) }
	if d.NUMATune != nil {
		block("NUMA placement (<numatune>)")
	}
	if t := d.CPUTune; t != nil && (len(t.VCPUPin) > 0 || t.EmulatorPin != nil || len(t.IOThreadPin) > 0) {
		block("pinned CPUs (<cputune> pins)")
	}
	if d.VCPU != nil && d.VCPU.CPUSet != "" {
		block("pinned CPUs (<vcpu cpuset=%q>)", d.VCPU.CPUSet)
	}
	if mb := d.MemoryBacking; mb != nil {
		if mb.MemoryHugePages != nil {
			block("huge pages (<memoryBacking><hugepages>)")
		}
		if mb.MemorySource != nil && mb.MemorySource.Type == "file" {
			block("file-backed memory")
		}
	}
	if d.Devices != nil {
		dev := d.Devices
		for range dev.TPMs {
			block("a virtual TPM")
		}
		for _, h := range dev.Hostdevs {
			switch {
			case h.SubsysMDev != nil:
				block("a mediated device (%s)", h.SubsysMDev.Source.Address.UUID)
			default:
				block("a host device (<hostdev>)")
			}
		}
		for _, m := range dev.Memorydevs {
			block("a memory device (%s)", m.Model)
		}
		for _, s := range dev.Serials {
			if s.Source != nil && s.Source.TCP != nil {
				block("a serial console on TCP %s:%s", s.Source.TCP.Host, s.Source.TCP.Service)
			}
		}
		for _, c := range dev.Consoles {
			if c.Source != nil && c.Source.TCP != nil {
				block("a console on TCP %s:%s", c.Source.TCP.Host, c.Source.TCP.Service)
			}
		}
		for _, x := range dev.Interfaces {
			i := Interface{}
			if x.MAC != nil {
				i.MAC = strings.ToLower(x.MAC.Address)
			}
			if x.Target != nil {
				i.Target = x.Target.Dev
			}
			i.Type = interfaceType(x.Source)
			if x.Source != nil && x.Source.Bridge != nil {
				i.Bridge = x.Source.Bridge.Bridge
			}
			if i.Type != "bridge" || x.VirtualPort != nil {
				what := i.Type
				if x.VirtualPort != nil {
					what += " with a virtual port"
				}
				block("interface %s of type %s", i.MAC, what)
			}
			f.Interfaces = append(f.Interfaces, i)
		}
	}
	return f, nil
}

func interfaceType(s *libvirtxml.DomainInterfaceSource) string {
	switch {
	case s == nil:
		return "ethernet"
	case s.Bridge != nil:
		return "bridge"
	case s.Ethernet != nil:
		return "ethernet"
	case s.Direct != nil:
		return "direct"
	case s.Hostdev != nil:
		return "hostdev"
	case s.VHostUser != nil:
		return "vhostuser"
	case s.Network != nil:
		return "network"
	case s.VDPA != nil:
		return "vdpa"
	}
	return "other"
}

// DestinationEdits is how the guest's XML changes for the destination, as
// Nova's get_updated_guest_xml changes it: each interface's bridge as the
// destination's port binding has it, and the graphics listen addresses the
// destination listens on.
type DestinationEdits struct {
	Bridges     map[string]string // by lower-case MAC; an interface not listed keeps its bridge
	VNCListen   string            // "" keeps the source's
	SpiceListen string
}

// RewriteForDestination returns the domain XML with the edits applied and
// every other byte as it was: the attributes are replaced in place, not by
// re-encoding the document, so nothing a parser does not model is lost.
// An interface named in Bridges that the XML does not have is an error.
func RewriteForDestination(doc string, e DestinationEdits) (string, error) {
	type span struct {
		start, end int
		attr, val  string
	}
	var edits []span
	dec := xml.NewDecoder(strings.NewReader(doc))
	var stack []string
	var ifaceMAC string       // the current <interface>'s MAC
	var ifaceSource *span     // its <source>, edited once its MAC is known
	var graphicsType string   // the current <graphics>' type
	seen := map[string]bool{} // MACs met
	for {
		before := int(dec.InputOffset())
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return "", fmt.Errorf("domain xml: %w: %w", errdefs.ErrInvalidArgument, err)
		}
		after := int(dec.InputOffset())
		switch t := tok.(type) {
		case xml.StartElement:
			parent := ""
			if len(stack) > 0 {
				parent = stack[len(stack)-1]
			}
			stack = append(stack, t.Name.Local)
			switch {
			case t.Name.Local == "interface" && parent == "devices":
				ifaceMAC, ifaceSource = "", nil
			case t.Name.Local == "mac" && parent == "interface":
				ifaceMAC = strings.ToLower(attr(t, "address"))
				seen[ifaceMAC] = true
			case t.Name.Local == "source" && parent == "interface" && attr(t, "bridge") != "":
				ifaceSource = &span{start: before, end: after, attr: "bridge"}
			case t.Name.Local == "graphics" && parent == "devices":
				graphicsType = attr(t, "type")
				if l := listenFor(graphicsType, e); l != "" && attr(t, "listen") != "" {
					edits = append(edits, span{before, after, "listen", l})
				}
			case t.Name.Local == "listen" && parent == "graphics":
				if l := listenFor(graphicsType, e); l != "" && attr(t, "type") == "address" && attr(t, "address") != "" {
					edits = append(edits, span{before, after, "address", l})
				}
			}
		case xml.EndElement:
			if len(stack) > 0 {
				stack = stack[:len(stack)-1]
			}
			if t.Name.Local == "interface" && ifaceSource != nil {
				if br, ok := e.Bridges[ifaceMAC]; ok {
					ifaceSource.val = br
					edits = append(edits, *ifaceSource)
				}
				ifaceMAC, ifaceSource = "", nil
			}
		}
	}
	var missing []string
	for mac := range e.Bridges {
		if !seen[mac] {
			missing = append(missing, mac)
		}
	}
	if len(missing) > 0 {
		sort.Strings(missing)
		return "", fmt.Errorf("domain xml: %w: no interface with MAC %s", errdefs.ErrNotFound, strings.Join(missing, ", "))
	}
	sort.Slice(edits, func(i, j int) bool { return edits[i].start < edits[j].start })
	var out bytes.Buffer
	at := 0
	for _, s := range edits {
		tag, err := setAttr(doc[s.start:s.end], s.attr, s.val)
		if err != nil {
			return "", err
		}
		out.WriteString(doc[at:s.start])
		out.WriteString(tag)
		at = s.end
	}
	out.WriteString(doc[at:])
	return out.String(), nil
}

func listenFor(graphicsType string, e DestinationEdits) string {
	switch graphicsType {
	case "vnc":
		return e.VNCListen
	case "spice":
		return e.SpiceListen
	}
	return ""
}

func attr(t xml.StartElement, name string) string {
	for _, a := range t.Attr {
		if a.Name.Space == "" && a.Name.Local == name {
			return a.Value
		}
	}
	return ""
}

// setAttr replaces the value of attribute name in one raw start tag.
func setAttr(tag, name, val string) (string, error) {
	for i := 0; i < len(tag); i++ {
		j := strings.Index(tag[i:], name)
		if j < 0 {
			break
		}
		j += i
		i = j
		if j == 0 || !isSpace(tag[j-1]) {
			continue
		}
		k := j + len(name)
		for k < len(tag) && isSpace(tag[k]) {
			k++
		}
		if k >= len(tag) || tag[k] != '=' {
			continue
		}
		k++
		for k < len(tag) && isSpace(tag[k]) {
			k++
		}
		if k >= len(tag) || (tag[k] != '"' && tag[k] != '\'') {
			continue
		}
		q := tag[k]
		end := strings.IndexByte(tag[k+1:], q)
		if end < 0 {
			break
		}
		var esc strings.Builder
		if err := xml.EscapeText(&esc, []byte(val)); err != nil {
			return "", err
		}
		v := strings.ReplaceAll(esc.String(), "'", "&#39;")
		return tag[:k+1] + v + tag[k+1+end:], nil
	}
	return "", fmt.Errorf("domain xml: %w: attribute %s not found in %q", errdefs.ErrInvalidArgument, name, tag)
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }
