package virt

import (
	"errors"
	"strings"
	"testing"

	"opendev.org/x/ferry/pkg/errdefs"
)

// novaDomain is shaped like the XML Zed's libvirt driver writes for a
// linuxbridge port (virt_type qemu), with a qemu namespace element the
// rewrite must keep byte for byte.
const novaDomain = `<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>instance-00000001</name>
  <uuid>8d6b1f2e-7a0c-4c1e-9a55-0a1b2c3d4e5f</uuid>
  <metadata>
    <nova:instance xmlns:nova="http://openstack.org/xmlns/libvirt/nova/1.1">
      <nova:name>vm &amp; co</nova:name>
    </nova:instance>
  </metadata>
  <memory unit='KiB'>262144</memory>
  <vcpu placement='static'>1</vcpu>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' cache='none'/>
      <source file='/var/lib/nova/instances/8d6b1f2e-7a0c-4c1e-9a55-0a1b2c3d4e5f/disk'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <interface type='bridge'>
      <mac address='FA:16:3E:12:34:56'/>
      <source bridge="brq1234567890a"/>
      <target dev='tap0a1b2c3d-4e'/>
      <model type='virtio'/>
      <mtu size='1450'/>
    </interface>
    <interface type='bridge'>
      <source bridge='brqother'/>
      <mac address='fa:16:3e:00:00:02'/>
      <target dev='tap0a1b2c3d-4f'/>
    </interface>
    <serial type='pty'>
      <log file='/var/lib/nova/instances/8d6b1f2e-7a0c-4c1e-9a55-0a1b2c3d4e5f/console.log' append='off'/>
      <target port='0'/>
    </serial>
    <graphics type='vnc' port='-1' autoport='yes' listen='127.0.0.1'>
      <listen type='address' address='127.0.0.1'/>
    </graphics>
  </devices>
  <qemu:commandline>
    <qemu:arg value='-accel'/>
  </qemu:commandline>
</domain>
`

func TestReadFacts(t *testing.T) {
	f, err := ReadFacts(novaDomain)
	if err != nil {
		t.Fatal(err)
	}
	if len(f.Blockers) != 0 {
		t.Errorf("blockers %v", f.Blockers)
	}
	want := []Interface{{MAC: "fa:16:3e:12:34:56", Type: "bridge", Bridge: "brq1234567890a", Target: "tap0a1b2c3d-4e"},
		{MAC: "fa:16:3e:00:00:02", Type: "bridge", Bridge: "brqother", Target: "tap0a1b2c3d-4f"}}
	if len(f.Interfaces) != 2 || f.Interfaces[0] != want[0] || f.Interfaces[1] != want[1] {
		t.Errorf("interfaces %+v", f.Interfaces)
	}
}

func TestReadFactsBlockers(t *testing.T) {
	for _, c := range []struct{ add, want string }{
		{`<cputune><vcpupin vcpu='0' cpuset='2'/></cputune>`, "pinned CPUs (<cputune> pins)"},
		{`<numatune><memory mode='strict' nodeset='0'/></numatune>`, "NUMA placement"},
		{`<memoryBacking><hugepages/></memoryBacking>`, "huge pages"},
		{`<devices><tpm model='tpm-crb'><backend type='emulator' version='2.0'/></tpm></devices>`, "a virtual TPM"},
		{`<devices><serial type='tcp'><source mode='bind' host='198.18.0.11' service='10000'/></serial></devices>`, "a serial console on TCP 198.18.0.11:10000"},
		{`<devices><hostdev mode='subsystem' type='pci' managed='yes'><source><address domain='0' bus='1' slot='0' function='0'/></source></hostdev></devices>`, "a host device"},
		{`<devices><interface type='direct'><mac address='fa:16:3e:00:00:09'/><source dev='eth0' mode='passthrough'/></interface></devices>`, "interface fa:16:3e:00:00:09 of type direct"},
		{`<devices><interface type='bridge'><mac address='fa:16:3e:00:00:0a'/><source bridge='br-int'/><virtualport type='openvswitch'/></interface></devices>`, "of type bridge with a virtual port"},
	} {
		doc := "<domain type='qemu'><name>x</name>" + c.add + "</domain>"
		f, err := ReadFacts(doc)
		if err != nil {
			t.Fatalf("%s: %v", c.add, err)
		}
		if len(f.Blockers) != 1 || !strings.Contains(f.Blockers[0], c.want) {
			t.Errorf("%s: blockers %v, want %q", c.add, f.Blockers, c.want)
		}
	}
}

func TestRewriteForDestination(t *testing.T) {
	out, err := RewriteForDestination(novaDomain, DestinationEdits{
		Bridges:   map[string]string{"fa:16:3e:12:34:56": "brqdest&<'x"},
		VNCListen: "198.18.0.12",
	})
	if err != nil {
		t.Fatal(err)
	}
	want := strings.NewReplacer(
		`<source bridge="brq1234567890a"/>`, `<source bridge="brqdest&amp;&lt;&#39;x"/>`,
		`listen='127.0.0.1'>`, `listen='198.18.0.12'>`,
		`<listen type='address' address='127.0.0.1'/>`, `<listen type='address' address='198.18.0.12'/>`,
	).Replace(novaDomain)
	if out != want {
		t.Errorf("rewritten:\n%s\nwant:\n%s", out, want)
	}
	f, err := ReadFacts(out)
	if err != nil || f.Interfaces[0].Bridge != "brqdest&<'x" || f.Interfaces[1].Bridge != "brqother" {
		t.Errorf("reparsed: %+v %v", f.Interfaces, err)
	}
	same, err := RewriteForDestination(novaDomain, DestinationEdits{})
	if err != nil || same != novaDomain {
		t.Errorf("no edits changed the document (%v)", err)
	}
	if _, err := RewriteForDestination(novaDomain, DestinationEdits{Bridges: map[string]string{"fa:16:3e:99:99:99": "b"}}); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("unknown MAC: %v", err)
	}
	if _, err := RewriteForDestination("<domain><devices>", DestinationEdits{}); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("truncated document: %v", err)
	}
}

func TestSetAttr(t *testing.T) {
	for _, c := range []struct{ tag, name, val, want string }{
		{`<source bridge='a'/>`, "bridge", "b", `<source bridge='b'/>`},
		{`<source  bridge = "a" />`, "bridge", "b", `<source  bridge = "b" />`},
		{`<x mybridge='q' bridge='a'>`, "bridge", "b", `<x mybridge='q' bridge='b'>`},
	} {
		got, err := setAttr(c.tag, c.name, c.val)
		if err != nil || got != c.want {
			t.Errorf("setAttr(%q) = %q, %v; want %q", c.tag, got, err, c.want)
		}
	}
	if _, err := setAttr(`<source dev='a'/>`, "bridge", "b"); err == nil {
		t.Error("missing attribute set")
	}
}
