package nova

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"

	"opendev.org/x/ferry/pkg/disks"
	"opendev.org/x/ferry/pkg/errdefs"
)

// Object is a nova_object primitive. Data keeps every field as it came, the
// ones ferry does not model included, so an object goes back unchanged but
// for what ferry set; Changes lists those (the conductor saves only them).
// It is answered at the version it was received in.
//
// Fields are read with Need, Opt and UUID, which fail on a missing or
// mistyped field instead of turning it into "" or 0: at the wire, a field
// that is not what Nova sends is an error.
type Object struct {
	Name      string
	Namespace string
	Version   string
	Data      map[string]json.RawMessage
	Changes   []string
}

type objectWire struct {
	Name      string                     `json:"nova_object.name"`
	Namespace string                     `json:"nova_object.namespace"`
	Version   string                     `json:"nova_object.version"`
	Data      map[string]json.RawMessage `json:"nova_object.data"`
	Changes   []string                   `json:"nova_object.changes,omitempty"`
}

// NewObject makes an empty object of a class at a version.
func NewObject(name, version string) *Object {
	return &Object{Name: name, Namespace: "nova", Version: version, Data: map[string]json.RawMessage{}}
}

// UnmarshalJSON reads a primitive; anything else is an error.
func (o *Object) UnmarshalJSON(b []byte) error {
	var w objectWire
	if err := json.Unmarshal(b, &w); err != nil {
		return fmt.Errorf("nova object: %w: %w", errdefs.ErrInvalidArgument, err)
	}
	if w.Name == "" || w.Version == "" {
		return fmt.Errorf("nova object: %w: not a nova_object primitive", errdefs.ErrInvalidArgument)
	}
	if w.Namespace != "nova" {
		return fmt.Errorf("nova object %s: %w: namespace %q", w.Name, errdefs.ErrInvalidArgument, w.Namespace)
	}
	if w.Data == nil {
		w.Data = map[string]json.RawMessage{}
	}
	*o = Object{Name: w.Name, Namespace: w.Namespace, Version: w.Version, Data: w.Data, Changes: w.Changes}
	return nil
}

// MarshalJSON writes the primitive.
func (o *Object) MarshalJSON() ([]byte, error) {
	return json.Marshal(objectWire{Name: o.Name, Namespace: o.Namespace, Version: o.Version, Data: o.Data, Changes: o.Changes})
}

// Opt decodes an optional field: ok is false when it is absent or null, and
// a present field of another type is an error naming it.
func Opt[T any](o *Object, field string) (v T, ok bool, err error) {
	if o == nil {
		return v, false, fmt.Errorf("%s: %w: no such object", field, errdefs.ErrInvalidArgument)
	}
	raw, present := o.Data[field]
	if !present || bytes.Equal(bytes.TrimSpace(raw), []byte("null")) {
		return v, false, nil
	}
	if err := json.Unmarshal(raw, &v); err != nil {
		return v, false, fmt.Errorf("%s.%s: %w: %s is not a %T", o.Name, field, errdefs.ErrInvalidArgument, truncate(raw), v)
	}
	return v, true, nil
}

// Need decodes a field that must be present and of type T.
func Need[T any](o *Object, field string) (T, error) {
	v, ok, err := Opt[T](o, field)
	if err == nil && !ok {
		err = fmt.Errorf("%s.%s: %w: missing", o.Name, field, errdefs.ErrInvalidArgument)
	}
	return v, err
}

// UUID reads a field that must hold a canonical uuid (an instance's, a
// migration's): ids name directories and libvirt domains.
func UUID(o *Object, field string) (string, error) {
	s, err := Need[string](o, field)
	if err != nil {
		return "", err
	}
	if err := disks.ValidUUID(s); err != nil {
		return "", fmt.Errorf("%s.%s: %w", o.Name, field, err)
	}
	return s, nil
}

func truncate(b []byte) string {
	if len(b) > 64 {
		return string(b[:64]) + "…"
	}
	return string(b)
}

// Set sets a field and records it as changed.
func (o *Object) Set(field string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("%s.%s: %w", o.Name, field, err)
	}
	o.Data[field] = b
	if !slices.Contains(o.Changes, field) {
		o.Changes = append(o.Changes, field)
	}
	return nil
}

// SetAll sets fields, stopping at the first that cannot be encoded.
func (o *Object) SetAll(fields map[string]any) error {
	for k, v := range fields {
		if err := o.Set(k, v); err != nil {
			return err
		}
	}
	return nil
}

// Child decodes a nested object field.
func (o *Object) Child(field string) (*Object, error) {
	raw, ok := o.Data[field]
	if !ok || bytes.Equal(bytes.TrimSpace(raw), []byte("null")) {
		return nil, fmt.Errorf("%s.%s: %w", o.Name, field, errdefs.ErrNotFound)
	}
	c := &Object{}
	if err := json.Unmarshal(raw, c); err != nil {
		return nil, fmt.Errorf("%s.%s: %w", o.Name, field, err)
	}
	return c, nil
}

// Apply takes the updates an object_action reply carries: every changed
// field, and "obj_what_changed", the fields still dirty afterwards.
func (o *Object) Apply(updates map[string]json.RawMessage) {
	o.Changes = nil
	for k, v := range updates {
		if k == "obj_what_changed" {
			var dirty []string
			_ = json.Unmarshal(v, &dirty)
			o.Changes = dirty
			continue
		}
		o.Data[k] = v
	}
}

// fresh is a copy of o with no changes recorded, for a save of its own.
func (o *Object) fresh() *Object {
	c := &Object{Name: o.Name, Namespace: o.Namespace, Version: o.Version, Data: make(map[string]json.RawMessage, len(o.Data))}
	for k, v := range o.Data {
		c.Data[k] = v
	}
	return c
}
