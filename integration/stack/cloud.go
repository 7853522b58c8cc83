package stack

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/gophercloud/gophercloud/v2"
	"github.com/gophercloud/gophercloud/v2/openstack/image/v2/imagedata"
)

// RootImageMiB is the size of the guest's root image (root_gb 0 flavors
// give the instance a disk of the image's size; the lab guest runs from
// its initramfs and only writes a counter into the disk's first sector).
const RootImageMiB = 1

// Subnet is the tenant network's (no DHCP; addresses inside the lab's range).
const Subnet = "198.18.128.0/24"

// populate creates the flavors, the tenant network and the guest images.
func (s *Stack) populate(ctx context.Context) error {
	a := s.api
	flavor := func(name string, ram int) (string, error) {
		var out struct {
			Flavor struct{ ID string } `json:"flavor"`
		}
		err := Do(ctx, a.Compute, "POST", "flavors", map[string]any{"flavor": map[string]any{
			"name": name, "vcpus": 1, "ram": ram, "disk": 0}}, &out)
		return out.Flavor.ID, err
	}
	var err error
	if s.Flavors.Small, err = flavor("ferry.small", 256); err != nil {
		return err
	}
	if s.Flavors.Bench, err = flavor("ferry.bench", 384); err != nil {
		return err
	}
	var net struct {
		Network struct{ ID string } `json:"network"`
	}
	// No port security on the tenant network: the linuxbridge agent's ARP
	// protection for a port is ebtables rules it cannot delete here
	// (ebtables-nft: "RULE_DELETE failed (Invalid argument)" on the
	// --among-src rule; this kernel has no legacy ebtables tables), and the
	// agent then retries the removal of a migrated or deleted instance's
	// tap forever and never wires a new port (boots time out waiting for
	// network-vif-plugged). Ports without port security get no ARP
	// protection and no security groups.
	if err := Do(ctx, a.Network, "POST", "networks", map[string]any{"network": map[string]any{"name": "ferry-net",
		"port_security_enabled": false}}, &net); err != nil {
		return err
	}
	s.Network = net.Network.ID
	if err := Do(ctx, a.Network, "POST", "subnets", map[string]any{"subnet": map[string]any{"network_id": s.Network,
		"name": "ferry-subnet", "cidr": Subnet, "ip_version": 4, "enable_dhcp": false, "gateway_ip": nil}}, nil); err != nil {
		return err
	}
	return s.uploadImages(ctx)
}

func (s *Stack) uploadImages(ctx context.Context) error {
	root := workDir("images", "root.raw")
	if err := os.MkdirAll(filepath.Dir(root), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(root, make([]byte, RootImageMiB<<20), 0o644); err != nil {
		return err
	}
	// The kernel and initramfs are raw images, not aki/ari: Debian's Nova
	// 26.2.2-1~deb12u5 (with the image format inspection of OSSA-2024-001)
	// fetches them again in pre_live_migration through fetch_to_raw, whose
	// deep inspection expects qemu-img to call an aki image "aki" — it
	// says raw — and refuses the migration with ImageUnacceptable ("Image
	// content does not match disk_format"). Booting does not inspect them.
	var err error
	if s.Images.Kernel, err = s.image(ctx, s.Lab.Image.Kernel, map[string]any{"name": "ferry-guest-kernel", "disk_format": "raw", "container_format": "bare"}); err != nil {
		return err
	}
	if s.Images.Ramdisk, err = s.image(ctx, s.Lab.Image.Initrd, map[string]any{"name": "ferry-guest-ramdisk", "disk_format": "raw", "container_format": "bare"}); err != nil {
		return err
	}
	s.Images.Root = map[string]string{}
	var names []string
	for n := range Workloads {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		w := Workloads[n]
		id, err := s.image(ctx, root, map[string]any{"name": "ferry-guest-" + n, "disk_format": "raw", "container_format": "bare",
			"kernel_id": s.Images.Kernel, "ramdisk_id": s.Images.Ramdisk, "os_command_line": CmdLine(w[0], w[1])})
		if err != nil {
			return err
		}
		s.Images.Root[n] = id
	}
	return nil
}

// image creates a public image and uploads its data.
func (s *Stack) image(ctx context.Context, path string, props map[string]any) (string, error) {
	props["visibility"] = "public"
	var out struct{ ID string }
	if err := Do(ctx, s.api.Image, "POST", "images", props, &out, 201); err != nil {
		return "", err
	}
	// In memory, so that the upload has a Content-Length: uwsgi's
	// http-socket does not take chunked bodies.
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	if err := imagedata.Upload(ctx, s.api.Image, out.ID, bytes.NewReader(b)).ExtractErr(); err != nil {
		return "", fmt.Errorf("upload %s: %w", path, err)
	}
	return out.ID, nil
}

// Server is what the tests read of a server.
type Server struct {
	ID           string  `json:"id"`
	Name         string  `json:"name"`
	Status       string  `json:"status"`
	Host         string  `json:"OS-EXT-SRV-ATTR:host"`
	Node         string  `json:"OS-EXT-SRV-ATTR:hypervisor_hostname"`
	InstanceName string  `json:"OS-EXT-SRV-ATTR:instance_name"`
	TaskState    *string `json:"OS-EXT-STS:task_state"`
	Fault        *struct {
		Message string `json:"message"`
		Details string `json:"details"`
	} `json:"fault"`
}

// GetServer reads a server.
func (a *API) GetServer(ctx context.Context, id string) (Server, error) {
	var out struct{ Server Server }
	err := Do(ctx, a.Compute, "GET", "servers/"+id, nil, &out)
	return out.Server, err
}

// Boot creates a server of a workload image on a host (through the
// scheduler: microversion 2.74's host), with one port on the tenant
// network, and waits until it is ACTIVE.
func (s *Stack) Boot(ctx context.Context, name, workload, flavor, host string) (Server, error) {
	return s.boot(ctx, name, workload, flavor, host, []map[string]any{{"uuid": s.Network}})
}

// BootWithoutPort boots a server with no network at all (what a
// native-mode ferryd can carry: it refuses instances with ports).
func (s *Stack) BootWithoutPort(ctx context.Context, name, workload, flavor, host string) (Server, error) {
	return s.boot(ctx, name, workload, flavor, host, "none")
}

func (s *Stack) boot(ctx context.Context, name, workload, flavor, host string, networks any) (Server, error) {
	a, err := s.API(ctx)
	if err != nil {
		return Server{}, err
	}
	img := s.Images.Root[workload]
	if img == "" {
		return Server{}, fmt.Errorf("stack: no image for workload %q", workload)
	}
	var out struct{ Server Server }
	body := map[string]any{"server": map[string]any{"name": name, "imageRef": img, "flavorRef": flavor,
		"networks": networks, "host": host, "config_drive": false}}
	if err := Do(ctx, a.Compute, "POST", "servers", body, &out, 202); err != nil {
		return Server{}, err
	}
	return a.WaitServer(ctx, out.Server.ID, 5*time.Minute, func(sv Server) bool { return sv.Status == "ACTIVE" && sv.TaskState == nil })
}

// WaitServer polls a server until done accepts it; ERROR ends the wait.
func (a *API) WaitServer(ctx context.Context, id string, timeout time.Duration, done func(Server) bool) (Server, error) {
	deadline := time.Now().Add(timeout)
	for {
		sv, err := a.GetServer(ctx, id)
		if err == nil && done(sv) {
			return sv, nil
		}
		if err == nil && sv.Status == "ERROR" {
			msg := ""
			if sv.Fault != nil {
				msg = sv.Fault.Message + ": " + firstLines(sv.Fault.Details, 5)
			}
			return sv, fmt.Errorf("server %s is in ERROR: %s", id, msg)
		}
		if time.Now().After(deadline) {
			return sv, fmt.Errorf("server %s: not done after %s (last %+v, %v)", id, timeout, sv, err)
		}
		select {
		case <-ctx.Done():
			return sv, ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// DeleteServer deletes a server and waits until it is gone.
func (a *API) DeleteServer(ctx context.Context, id string) error {
	if err := Do(ctx, a.Compute, "DELETE", "servers/"+id, nil, nil, 204, 404); err != nil {
		return err
	}
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) {
		var out map[string]any
		err := Do(ctx, a.Compute, "GET", "servers/"+id, nil, &out, 200)
		if err != nil && gophercloud.ResponseCodeIs(err, 404) {
			return nil
		}
		time.Sleep(500 * time.Millisecond)
	}
	return fmt.Errorf("server %s not gone after 2 minutes", id)
}

// Migration is one entry of os-migrations.
type Migration struct {
	ID              int    `json:"id"`
	UUID            string `json:"uuid"`
	Status          string `json:"status"`
	Type            string `json:"migration_type"`
	Source          string `json:"source_compute"`
	Dest            string `json:"dest_compute"`
	MemoryTotal     *int64 `json:"memory_total_bytes"`
	MemoryProcessed *int64 `json:"memory_processed_bytes"`
	DiskTotal       *int64 `json:"disk_total_bytes"`
	DiskProcessed   *int64 `json:"disk_processed_bytes"`
}

// Migrations lists a server's migrations, newest first.
func (a *API) Migrations(ctx context.Context, server string) ([]Migration, error) {
	var out struct{ Migrations []Migration }
	err := Do(ctx, a.Compute, "GET", "os-migrations?instance_uuid="+server, nil, &out)
	return out.Migrations, err
}

// InProgress reads a running migration as GET /servers/{id}/migrations/{id}
// shows it: the only view with the byte counts (os-migrations has none).
func (a *API) InProgress(ctx context.Context, server string, id int) (Migration, error) {
	var out struct{ Migration Migration }
	err := Do(ctx, a.Compute, "GET", fmt.Sprintf("servers/%s/migrations/%d", server, id), nil, &out)
	return out.Migration, err
}

// Binding is one of a port's bindings (Neutron's binding-extended).
type Binding struct {
	Host    string `json:"host"`
	Status  string `json:"status"`
	VIFType string `json:"vif_type"`
}

// Port is what the tests read of a port.
type Port struct {
	ID       string `json:"id"`
	Status   string `json:"status"`
	HostID   string `json:"binding:host_id"`
	VIFType  string `json:"binding:vif_type"`
	DeviceID string `json:"device_id"`
}

// Ports lists a server's ports.
func (a *API) Ports(ctx context.Context, server string) ([]Port, error) {
	var out struct{ Ports []Port }
	err := Do(ctx, a.Network, "GET", "ports?device_id="+server, nil, &out)
	return out.Ports, err
}

// Bindings lists a port's bindings.
func (a *API) Bindings(ctx context.Context, port string) ([]Binding, error) {
	var out struct{ Bindings []Binding }
	err := Do(ctx, a.Network, "GET", "ports/"+port+"/bindings", nil, &out)
	return out.Bindings, err
}

// Allocations returns a consumer's allocations: resource provider name →
// resource class → amount.
func (a *API) Allocations(ctx context.Context, consumer string) (map[string]map[string]int, error) {
	var out struct {
		Allocations map[string]struct {
			Resources map[string]int `json:"resources"`
		} `json:"allocations"`
	}
	if err := Do(ctx, a.Placement, "GET", "allocations/"+consumer, nil, &out); err != nil {
		return nil, err
	}
	res := map[string]map[string]int{}
	for rp, v := range out.Allocations {
		var p struct{ Name string }
		if err := Do(ctx, a.Placement, "GET", "resource_providers/"+rp, nil, &p); err != nil {
			return nil, err
		}
		res[p.Name] = v.Resources
	}
	return res, nil
}

func firstLines(s string, n int) string {
	l := strings.SplitN(s, "\n", n+1)
	if len(l) > n {
		l = l[:n]
	}
	return strings.Join(l, "\n")
}

// Action is one of a server's instance actions with its events
// (os-instance-actions), as `openstack server event show` prints it.
type Action struct {
	Action    string `json:"action"`
	RequestID string `json:"request_id"`
	Message   string `json:"message"`
	Events    []struct {
		Event   string `json:"event"`
		Result  string `json:"result"`
		Host    string `json:"host"`
		Details string `json:"details"`
	} `json:"events"`
}

// Actions lists a server's actions, newest first, each with its events.
func (a *API) Actions(ctx context.Context, server string) ([]Action, error) {
	var out struct {
		InstanceActions []Action `json:"instanceActions"`
	}
	if err := Do(ctx, a.Compute, "GET", "servers/"+server+"/os-instance-actions", nil, &out); err != nil {
		return nil, err
	}
	for i := range out.InstanceActions {
		var one struct {
			InstanceAction Action `json:"instanceAction"`
		}
		if err := Do(ctx, a.Compute, "GET", "servers/"+server+"/os-instance-actions/"+out.InstanceActions[i].RequestID, nil, &one); err != nil {
			return nil, err
		}
		out.InstanceActions[i].Events = one.InstanceAction.Events
	}
	return out.InstanceActions, nil
}

// ComputeService is one nova-compute of os-services.
type ComputeService struct {
	Host      string `json:"host"`
	State     string `json:"state"`
	Status    string `json:"status"`
	UpdatedAt string `json:"updated_at"`
}

// ComputeServices lists the nova-compute services.
func (a *API) ComputeServices(ctx context.Context) ([]ComputeService, error) {
	var out struct{ Services []ComputeService }
	err := Do(ctx, a.Compute, "GET", "os-services?binary=nova-compute", nil, &out)
	return out.Services, err
}

// Flavor returns the id of a 1-vCPU flavor of the given name, RAM and
// extra specs, creating it the first time.
func (s *Stack) Flavor(ctx context.Context, name string, ramMiB int, specs map[string]string) (string, error) {
	a, err := s.API(ctx)
	if err != nil {
		return "", err
	}
	var list struct {
		Flavors []struct{ ID, Name string } `json:"flavors"`
	}
	if err := Do(ctx, a.Compute, "GET", "flavors", nil, &list); err != nil {
		return "", err
	}
	for _, f := range list.Flavors {
		if f.Name == name {
			return f.ID, nil
		}
	}
	var out struct {
		Flavor struct{ ID string } `json:"flavor"`
	}
	if err := Do(ctx, a.Compute, "POST", "flavors", map[string]any{"flavor": map[string]any{
		"name": name, "vcpus": 1, "ram": ramMiB, "disk": 0}}, &out); err != nil {
		return "", err
	}
	if len(specs) > 0 {
		if err := Do(ctx, a.Compute, "POST", "flavors/"+out.Flavor.ID+"/os-extra_specs", map[string]any{"extra_specs": specs}, nil); err != nil {
			return "", err
		}
	}
	return out.Flavor.ID, nil
}
