package nova

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"opendev.org/x/ferry/pkg/migration"
	"opendev.org/x/ferry/pkg/virt"
	"opendev.org/x/ferry/rpc/oslo"
)

// preCaller answers pre_live_migration: it refuses disk descriptions that
// name a backing file when the destination has no bases.
type preCaller struct {
	haveBases bool
	disks     []string // the disk argument of each call
}

func (p *preCaller) Call(_ context.Context, _ oslo.Target, method string, args any, _ oslo.CallOptions) (json.RawMessage, error) {
	a := args.(map[string]any)
	disk, _ := a["disk"].(string)
	p.disks = append(p.disks, disk)
	if !p.haveBases && strings.Contains(disk, `"backing_file":"base1"`) {
		return nil, &oslo.Failure{Class: "MigrationPreCheckError", Module: "nova.exception", Message: "backing files not in _base on this host: base1"}
	}
	md := NewObject("LibvirtLiveMigrateData", "1.10")
	md.Set("target_connect_addr", "198.19.0.2")
	return json.Marshal(md)
}

func (p *preCaller) Cast(context.Context, oslo.Target, string, any, oslo.CallOptions) error {
	return nil
}

func TestPrepareCopyMode(t *testing.T) {
	overlay := `[{"type":"qcow2","path":"/i/u/disk","virt_disk_size":1,"backing_file":"base1","disk_size":1,"over_committed_disk_size":0}]`
	flat := `[{"type":"qcow2","path":"/i/u/disk","virt_disk_size":1,"backing_file":"","disk_size":1,"over_committed_disk_size":0}]`
	tests := []struct {
		name      string
		haveBases bool
		flatDisk  *string // nil: the source offered no incremental copy
		why       string
		wantCopy  virt.DiskCopy
		wantCalls []string
		wantNote  string
	}{
		{name: "the destination has the base: incremental", haveBases: true, flatDisk: &flat,
			wantCopy: virt.CopyIncremental, wantCalls: []string{overlay}, wantNote: "incremental"},
		{name: "the destination lacks the base: asked again flat, full copy", flatDisk: &flat,
			wantCopy: virt.CopyFull, wantCalls: []string{overlay, flat}, wantNote: "full: the destination refused the overlays"},
		{name: "nothing to offer: one call, full copy with the source's reason", why: "no copied disk has a backing file",
			wantCopy: virt.CopyFull, wantCalls: []string{flat}, wantNote: "full: no copied disk has a backing file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			caller := &preCaller{haveBases: tt.haveBases}
			c := NewCompute(Options{Host: "src", Peers: map[string]Peer{"dst": {Management: "198.18.0.2"}}}, nil, nil, caller)
			disk := overlay
			if tt.flatDisk == nil {
				disk = flat
			}
			ns := &novaState{Instance: NewObject("Instance", "2.8"), Migration: NewObject("Migration", "1.7"),
				MigrateData: NewObject("LibvirtLiveMigrateData", "1.10"), Disk: &disk, FlatDisk: tt.flatDisk, CopyWhy: tt.why}
			extra, _ := json.Marshal(ns)
			m := &migration.Migration{Request: migration.Request{ID: "m1", DestHost: "dst", Extra: extra,
				Spec: virt.MigrateSpec{Copy: virt.CopyFull, Disks: []string{"vda"}}}}
			if err := c.Prepare(context.Background(), m); err != nil {
				t.Fatal(err)
			}
			if m.Spec.Copy != tt.wantCopy || !strings.HasPrefix(m.CopyNote, tt.wantNote) {
				t.Errorf("copy = %v %q, want %v %q…", m.Spec.Copy, m.CopyNote, tt.wantCopy, tt.wantNote)
			}
			if strings.Join(caller.disks, "\n") != strings.Join(tt.wantCalls, "\n") {
				t.Errorf("pre_live_migration disk arguments:\n%s\nwant\n%s", strings.Join(caller.disks, "\n"), strings.Join(tt.wantCalls, "\n"))
			}
			if m.Spec.MigrateURI != "tcp://198.19.0.2" {
				t.Errorf("migrate URI %q", m.Spec.MigrateURI)
			}
			var saved novaState
			if err := json.Unmarshal(m.Extra, &saved); err != nil || *saved.Disk != caller.disks[len(caller.disks)-1] {
				t.Errorf("journalled disk %v, want the one the destination accepted", saved.Disk)
			}
		})
	}
}
