package nova

import (
	"encoding/json"
	"fmt"
	"net"
	"strings"
	"time"

	"opendev.org/x/ferry/pkg/errdefs"
)

// The notifications nova-compute's source side emits around a live
// migration (Zed, nova/compute/manager.py): each call point sends the
// legacy notification (compute_utils.notify_about_instance_usage,
// publisher "compute.<host>") and then the versioned one
// (notify_about_instance_action, InstanceActionPayload 1.8, publisher
// "nova-compute:<host>"), both at INFO. This file builds them from the
// Instance primitive ferry holds, as pure functions; rpc/nova/testdata/notify
// holds what Nova's own code builds from the same instance.
//
// Where ferry's differ from what a nova-compute would send, and why:
// message_id is derived from the migration and the report (a re-send is
// the same notification) and the timestamps are the moment the report was
// owed; the instance is the cast's, so updated_at and progress are what
// the cast carried, where nova-compute's copy carries those of its own
// later saves (its monitor saves the progress every few seconds);
// image_ref_url needs Glance's endpoint in the config (Nova asks the
// catalog), else it is the bare image id, Nova's own fallback.

// notifyPoint is one of those call points.
type notifyPoint struct {
	legacy  string // after "compute.instance."
	action  string // the versioned event type is "instance.<action>.<phase>"
	phase   string
	network bool // the legacy payload carries fixed_ips (network_info passed)
	bdms    bool // bdms passed: block_devices from them (the rollback's)
	cleared bool // the instance's task state cleared and progress zeroed before it
}

var notifyPoints = map[string]notifyPoint{
	repNotePostStart:     {legacy: "live_migration._post.start", action: "live_migration_post", phase: "start", network: true},
	repNotePostEnd:       {legacy: "live_migration._post.end", action: "live_migration_post", phase: "end", network: true},
	repNoteRollbackStart: {legacy: "live_migration._rollback.start", action: "live_migration_rollback", phase: "start", bdms: true},
	repNoteRollbackEnd:   {legacy: "live_migration._rollback.end", action: "live_migration_rollback", phase: "end", bdms: true, cleared: true},
	repNoteAbortStart:    {legacy: "live.migration.abort.start", action: "live_migration_abort", phase: "start"},
	repNoteAbortEnd:      {legacy: "live.migration.abort.end", action: "live_migration_abort", phase: "end"},
	repNoteForceStart:    {legacy: "live.migration.force.complete.start", action: "live_migration_force_complete", phase: "start"},
	repNoteForceEnd:      {legacy: "live.migration.force.complete.end", action: "live_migration_force_complete", phase: "end"},
}

// PayloadOptions are what a payload needs besides the instance.
type PayloadOptions struct {
	// ImageAPI is Glance's endpoint ([glance] api_servers, or the
	// catalog's): image_ref_url is "<ImageAPI>/images/<image_ref>"; ""
	// gives the bare image_ref, Nova's own fallback without an endpoint.
	ImageAPI string
	// BDMsInNotifications is [notifications] bdms_in_notifications: the
	// versioned block_devices is a list (none: companion mode carries no
	// volumes) instead of null, except where Nova passes the BDMs itself.
	BDMsInNotifications bool
}

// legacyPayload is nova.notifications.info_from_instance of inst with
// populate_image_ref_url, as notify_about_instance_usage sends it.
func legacyPayload(inst *Object, pt notifyPoint, o PayloadOptions) (map[string]any, error) {
	inst = pt.apply(inst)
	f, err := inst.Child("flavor")
	if err != nil {
		return nil, fmt.Errorf("legacy payload: %w", err)
	}
	root, err1 := Need[int64](f, "root_gb")
	eph, err2 := Need[int64](f, "ephemeral_gb")
	if err := firstErr(err1, err2); err != nil {
		return nil, fmt.Errorf("legacy payload: %w", err)
	}
	p := map[string]any{
		"tenant_id": raw(inst, "project_id"), "user_id": raw(inst, "user_id"), "instance_id": raw(inst, "uuid"),
		"display_name": raw(inst, "display_name"), "reservation_id": raw(inst, "reservation_id"),
		"hostname": raw(inst, "hostname"), "instance_type": orEmpty(f, "name"), "instance_type_id": raw(inst, "instance_type_id"),
		"instance_flavor_id": orEmpty(f, "flavorid"), "architecture": raw(inst, "architecture"),
		"memory_mb": raw(f, "memory_mb"), "disk_gb": root + eph, "vcpus": raw(f, "vcpus"), "root_gb": root, "ephemeral_gb": eph,
		"host": raw(inst, "host"), "node": raw(inst, "node"), "availability_zone": raw(inst, "availability_zone"),
		"cell_name": nullSafeStr(inst, "cell_name"), "os_type": raw(inst, "os_type"), "kernel_id": raw(inst, "kernel_id"),
		"ramdisk_id": raw(inst, "ramdisk_id"), "state": raw(inst, "vm_state"), "state_description": nullSafeStr(inst, "task_state"),
		"access_ip_v4": raw(inst, "access_ip_v4"), "access_ip_v6": raw(inst, "access_ip_v6"), "metadata": raw(inst, "metadata"),
	}
	if err := legacyTimes(p, inst); err != nil {
		return nil, err
	}
	p["progress"] = ""
	if n, ok, _ := Opt[int64](inst, "progress"); ok && n != 0 {
		p["progress"] = n
	}
	img, _, err := Opt[string](inst, "image_ref")
	if err != nil {
		return nil, err
	}
	p["image_ref_url"] = img
	if o.ImageAPI != "" {
		p["image_ref_url"] = strings.TrimSuffix(o.ImageAPI, "/") + "/images/" + img
	}
	if p["image_meta"], err = imageMeta(inst); err != nil {
		return nil, err
	}
	if pt.network {
		if p["fixed_ips"], err = legacyFixedIPs(inst); err != nil {
			return nil, err
		}
	}
	return p, nil
}

// legacyTimes are info_from_instance's dates: created_at as str(), the
// others as null_safe_isotime.
func legacyTimes(p map[string]any, inst *Object) error {
	var err error
	if p["created_at"], err = pyStrTime(inst, "created_at"); err != nil {
		return err
	}
	for _, k := range []string{"terminated_at", "deleted_at", "launched_at"} {
		if p[k], err = isoTime(inst, k); err != nil {
			return err
		}
	}
	return nil
}

// imageMeta is notifications.image_meta: the image_* keys of the
// system metadata, without the prefix.
func imageMeta(inst *Object) (map[string]json.RawMessage, error) {
	sys, _, err := Opt[map[string]json.RawMessage](inst, "system_metadata")
	if err != nil {
		return nil, err
	}
	meta := map[string]json.RawMessage{}
	for k, v := range sys {
		if rest, ok := strings.CutPrefix(k, "image_"); ok {
			meta[rest] = v
		}
	}
	return meta, nil
}

// legacyFixedIPs is info_from_instance's fixed_ips: each fixed IP of the
// network model with its network's label and its VIF's MAC.
func legacyFixedIPs(inst *Object) ([]any, error) {
	vifs, err := networkModel(inst)
	if err != nil {
		return nil, err
	}
	ips := []any{}
	for _, v := range vifs {
		for _, ip := range v.fixedIPs() {
			ip["label"], ip["vif_mac"] = v.Network.Label, v.Address
			ips = append(ips, ip)
		}
	}
	return ips, nil
}

// versionedPayload is InstanceActionPayload 1.8 (fault none) of inst for a
// request made in rctx, as obj_to_primitive sends it.
func versionedPayload(inst *Object, rctx Context, pt notifyPoint, o PayloadOptions) (*Object, error) {
	inst = pt.apply(inst)
	p := NewObject("InstanceActionPayload", "1.8")
	schema := [][2]string{{"uuid", "uuid"}, {"user_id", "user_id"}, {"tenant_id", "project_id"},
		{"reservation_id", "reservation_id"}, {"display_name", "display_name"}, {"display_description", "display_description"},
		{"host_name", "hostname"}, {"host", "host"}, {"node", "node"}, {"os_type", "os_type"}, {"architecture", "architecture"},
		{"availability_zone", "availability_zone"}, {"image_uuid", "image_ref"}, {"key_name", "key_name"},
		{"kernel_id", "kernel_id"}, {"ramdisk_id", "ramdisk_id"}, {"created_at", "created_at"}, {"launched_at", "launched_at"},
		{"terminated_at", "terminated_at"}, {"deleted_at", "deleted_at"}, {"updated_at", "updated_at"},
		{"state", "vm_state"}, {"task_state", "task_state"}, {"progress", "progress"}, {"metadata", "metadata"},
		{"locked", "locked"}}
	for _, s := range schema {
		p.Data[s[0]] = rawMsg(inst, s[1])
	}
	ps, err := powerState(inst)
	if err != nil {
		return nil, err
	}
	auto, _, err := Opt[bool](inst, "auto_disk_config")
	if err != nil {
		return nil, err
	}
	sys, _, err := Opt[map[string]json.RawMessage](inst, "system_metadata")
	if err != nil {
		return nil, err
	}
	fl, err := flavorPayload(inst)
	if err != nil {
		return nil, err
	}
	ips, err := ipPayloads(inst)
	if err != nil {
		return nil, err
	}
	var bdms any // BlockDevicePayload.from_instance: None unless bdms_in_notifications
	if pt.bdms || o.BDMsInNotifications {
		bdms = []any{}
	}
	user, project := rctx.raw("user_id"), rctx.raw("project_id")
	var reqID any
	if rctx.Str("user_id") != "" && rctx.Str("project_id") != "" {
		reqID = rctx.raw("request_id")
	}
	locked := sys["locked_reason"]
	if locked == nil {
		locked = json.RawMessage("null")
	}
	err = p.SetAll(map[string]any{"power_state": ps, "auto_disk_config": map[bool]string{true: "AUTO", false: "MANUAL"}[auto],
		"flavor": fl, "ip_addresses": ips, "block_devices": bdms, "request_id": reqID, "action_initiator_user": user,
		"action_initiator_project": project, "locked_reason": locked, "fault": nil})
	p.Changes = nil // emit() resets them: a payload lists none
	return p, err
}

// apply is the instance as the source holds it at the call point.
func (pt notifyPoint) apply(inst *Object) *Object {
	if !pt.cleared {
		return inst
	}
	c := inst.fresh()
	c.Data["task_state"], c.Data["progress"] = json.RawMessage("null"), json.RawMessage("0")
	c.Changes = nil
	return c
}

// flavorPayload is FlavorPayload 1.4 of the instance's flavor. Its
// projects is never loaded on a compute host (the payload's copy of the
// flavor has no context to lazy-load it with): null.
func flavorPayload(inst *Object) (*Object, error) {
	f, err := inst.Child("flavor")
	if err != nil {
		return nil, fmt.Errorf("versioned payload: %w", err)
	}
	p := NewObject("FlavorPayload", "1.4")
	for _, k := range []string{"flavorid", "memory_mb", "vcpus", "root_gb", "ephemeral_gb", "name", "swap", "rxtx_factor",
		"vcpu_weight", "disabled", "is_public", "extra_specs", "projects", "description"} {
		p.Data[k] = rawMsg(f, k)
	}
	return p, nil
}

// ipPayloads are IpPayload 1.0s of every fixed IP of the instance's
// network_info.
func ipPayloads(inst *Object) ([]*Object, error) {
	vifs, err := networkModel(inst)
	if err != nil {
		return nil, err
	}
	out := []*Object{}
	for _, v := range vifs {
		for _, ip := range v.fixedIPs() {
			p := NewObject("IpPayload", "1.0")
			meta := v.Meta
			if meta == nil {
				meta = map[string]any{}
			}
			if err := p.SetAll(map[string]any{"label": v.Network.Label, "mac": v.Address, "meta": meta, "port_uuid": v.ID,
				"version": ip["version"], "address": ip["address"], "device_name": v.Devname}); err != nil {
				return nil, err
			}
			p.Changes = nil
			out = append(out, p)
		}
	}
	return out, nil
}

// powerStates are InstancePowerStateField's names by Nova's integer state.
var powerStates = []string{"pending", "running", "_unused", "paused", "shutdown", "_unused", "crashed", "suspended"}

func powerState(inst *Object) (any, error) {
	n, ok, err := Opt[int](inst, "power_state")
	if err != nil || !ok {
		return nil, err
	}
	if n < 0 || n >= len(powerStates) {
		return nil, fmt.Errorf("Instance.power_state: %w: %d", errdefs.ErrInvalidArgument, n)
	}
	return powerStates[n], nil
}

// modelVIF is a VIF of Nova's network model, as far as notifications read it.
type modelVIF struct {
	ID      string         `json:"id"`
	Address string         `json:"address"`
	Devname *string        `json:"devname"`
	Meta    map[string]any `json:"meta"`
	Network *struct {
		Label   string `json:"label"`
		Subnets []struct {
			IPs []map[string]any `json:"ips"`
		} `json:"subnets"`
	} `json:"network"`
}

func networkModel(inst *Object) ([]modelVIF, error) {
	cache, err := inst.Child("info_cache")
	if err != nil {
		return nil, nil // no cache: Nova's get_network_info is empty
	}
	s, ok, err := Opt[string](cache, "network_info")
	if err != nil || !ok {
		return nil, err
	}
	var vifs []modelVIF
	if err := json.Unmarshal([]byte(s), &vifs); err != nil {
		return nil, fmt.Errorf("instance network_info: %w: %w", errdefs.ErrInvalidArgument, err)
	}
	return vifs, nil
}

// fixedIPs is VIF.fixed_ips() of the model: every IP of every subnet,
// hydrated as FixedIP (type fixed unless given, a version from the address
// unless given, meta {} unless given, floating IPs hydrated as IPs).
func (v modelVIF) fixedIPs() []map[string]any {
	if v.Network == nil {
		return nil
	}
	var out []map[string]any
	for _, sn := range v.Network.Subnets {
		for _, ip := range sn.IPs {
			fip := hydrateIP(ip, "fixed")
			var floats []any
			if fl, ok := ip["floating_ips"].([]any); ok {
				for _, f := range fl {
					if m, ok := f.(map[string]any); ok {
						floats = append(floats, hydrateIP(m, ""))
					}
				}
			}
			if floats == nil {
				floats = []any{}
			}
			fip["floating_ips"] = floats
			out = append(out, fip)
		}
	}
	return out
}

func hydrateIP(ip map[string]any, defType string) map[string]any {
	out := map[string]any{}
	for k, v := range ip {
		out[k] = v
	}
	if out["type"] == nil && defType != "" {
		out["type"] = defType
	} else if _, ok := out["type"]; !ok {
		out["type"] = nil
	}
	if out["meta"] == nil {
		out["meta"] = map[string]any{}
	}
	if a, ok := out["address"].(string); ok && a != "" && out["version"] == nil {
		if p := net.ParseIP(a); p != nil {
			out["version"] = map[bool]int{true: 4, false: 6}[p.To4() != nil]
		}
	} else if _, ok := out["version"]; !ok {
		out["version"] = nil
	}
	return out
}

// raw is a field as it came (null when absent: the field is not loaded,
// which a payload shows as None).
func raw(o *Object, field string) json.RawMessage { return rawMsg(o, field) }

func rawMsg(o *Object, field string) json.RawMessage {
	if v, ok := o.Data[field]; ok {
		return v
	}
	return json.RawMessage("null")
}

// orEmpty is flavor.get(field, "") in Python: "" when absent.
func orEmpty(o *Object, field string) json.RawMessage {
	if v, ok := o.Data[field]; ok {
		return v
	}
	return json.RawMessage(`""`)
}

// nullSafeStr is notifications' null_safe_str: "" for a false value.
func nullSafeStr(o *Object, field string) any {
	v, ok, _ := Opt[any](o, field)
	if !ok || v == "" || v == false || v == float64(0) {
		return ""
	}
	if s, ok := v.(string); ok {
		return s
	}
	return fmt.Sprint(v)
}

// novaTime reads a DateTimeField primitive ("2006-01-02T15:04:05Z").
func novaTime(o *Object, field string) (time.Time, bool, error) {
	s, ok, err := Opt[string](o, field)
	if err != nil || !ok {
		return time.Time{}, false, err
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, false, fmt.Errorf("%s.%s: %w: %q is not a time", o.Name, field, errdefs.ErrInvalidArgument, s)
	}
	return t.UTC(), true, nil
}

// pyStrTime is str() of an aware UTC datetime ("None" for none, as
// info_from_instance's str(instance.created_at) gives).
func pyStrTime(o *Object, field string) (string, error) {
	t, ok, err := novaTime(o, field)
	if err != nil || !ok {
		return "None", err
	}
	if t.Nanosecond()/1000 == 0 {
		return t.Format("2006-01-02 15:04:05+00:00"), nil
	}
	return t.Format("2006-01-02 15:04:05.000000+00:00"), nil
}

// isoTime is null_safe_isotime: utils.strtime ("%Y-%m-%dT%H:%M:%S.%f"),
// "" for none.
func isoTime(o *Object, field string) (string, error) {
	t, ok, err := novaTime(o, field)
	if err != nil || !ok {
		return "", err
	}
	return t.Format(TimestampFormat), nil
}

func firstErr(errs ...error) error {
	for _, e := range errs {
		if e != nil {
			return e
		}
	}
	return nil
}

// raw is an entry as it came, null when absent.
func (c Context) raw(k string) json.RawMessage {
	if v, ok := c[k]; ok {
		return v
	}
	return json.RawMessage("null")
}

// notifySafeKeys are oslo.messaging's _sanitize_context keys: all a
// notification's context keeps of the request's.
var notifySafeKeys = []string{"user_id", "project_id", "domain_id", "user_domain_id", "project_domain_id", "is_admin",
	"request_id", "roles", "user_name", "project_name", "domain_name", "user_domain_name", "project_domain_name",
	"service_user_id", "service_user_domain_id", "service_user_domain_name", "service_project_id", "service_project_name",
	"service_project_domain_id", "service_project_domain_name", "service_roles", "global_request_id", "system_scope",
	"user", "domain", "user_domain", "project_domain"}

// notifyContext is the context a notification carries: the request's
// sanitized by oslo's notifier (RequestContext.from_dict of its safe keys)
// and serialized again (to_dict), so every other key has its default and
// the timestamp is the notification's own.
func notifyContext(rctx Context, now time.Time) map[string]json.RawMessage {
	safe := Context{}
	for _, k := range notifySafeKeys {
		if v, ok := rctx[k]; ok {
			safe[k] = v
		}
	}
	pick := func(keys ...string) json.RawMessage { // from_dict's first present, non-null key
		for _, k := range keys {
			if v, ok := safe[k]; ok && string(v) != "null" {
				return v
			}
		}
		return json.RawMessage("null")
	}
	user, project := pick("user_id", "user"), pick("project_id")
	domain, udom, pdom := pick("domain_id", "domain"), pick("user_domain_id", "user_domain"), pick("project_domain_id", "project_domain")
	ident := []string{}
	for _, v := range []json.RawMessage{user, project, domain, udom, pdom} {
		var s string
		if json.Unmarshal(v, &s) != nil || s == "" {
			s = "-"
		}
		ident = append(ident, s)
	}
	identity, _ := json.Marshal(strings.Join(ident, " "))
	ts, _ := json.Marshal(now.UTC().Format(TimestampFormat))
	roles := pick("roles")
	if string(roles) == "null" {
		roles = json.RawMessage("[]")
	}
	null := json.RawMessage("null")
	return map[string]json.RawMessage{
		"user": user, "project": project, "domain": domain, "user_domain": udom, "project_domain": pdom,
		"user_id": user, "project_id": project, "is_admin": pick("is_admin"), "read_only": json.RawMessage("false"),
		"show_deleted": json.RawMessage("false"), "auth_token": null, "request_id": pick("request_id"),
		"global_request_id": pick("global_request_id"), "resource_uuid": null, "roles": roles,
		"user_identity": identity, "is_admin_project": json.RawMessage("true"), "system_scope": pick("system_scope"),
		"read_deleted": json.RawMessage(`"no"`), "remote_address": null, "timestamp": ts, "quota_class": null,
		"user_name": pick("user_name"), "project_name": pick("project_name"), "service_catalog": json.RawMessage("[]"),
	}
}
