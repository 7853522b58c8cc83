package nova

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"

	"opendev.org/x/ferry/pkg/errdefs"
)

// Object is a nova_object primitive. Data keeps every field as it came, the
// ones ferry does not model included, so an object goes back unchanged but
// for what ferry set; Changes lists those (the conductor saves only them).
// It is answered at the version it was received in.
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

// Get decodes a field; it reports false when the field is absent or null.
func (o *Object) Get(field string, v any) bool {
	raw, ok := o.Data[field]
	if !ok || bytes.Equal(bytes.TrimSpace(raw), []byte("null")) {
		return false
	}
	return json.Unmarshal(raw, v) == nil
}

// Str returns a string field ("" when absent or null).
func (o *Object) Str(field string) string {
	var s string
	o.Get(field, &s)
	return s
}

// Int returns an integer field (0 when absent or null).
func (o *Object) Int(field string) int64 {
	var n int64
	o.Get(field, &n)
	return n
}

// Bool returns a boolean field (false when absent or null).
func (o *Object) Bool(field string) bool {
	var b bool
	o.Get(field, &b)
	return b
}

// Has reports whether the field is set (possibly to null).
func (o *Object) Has(field string) bool { _, ok := o.Data[field]; return ok }

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

// Clone returns a deep copy.
func (o *Object) Clone() *Object {
	c := &Object{Name: o.Name, Namespace: o.Namespace, Version: o.Version, Data: make(map[string]json.RawMessage, len(o.Data)),
		Changes: slices.Clone(o.Changes)}
	for k, v := range o.Data {
		c.Data[k] = slices.Clone(v)
	}
	return c
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

// ObjectList is a nova ObjectList primitive's objects.
func (o *Object) List() ([]*Object, error) {
	var objs []*Object
	if !o.Get("objects", &objs) {
		return nil, nil
	}
	return objs, nil
}
