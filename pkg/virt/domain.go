package virt

import (
	"context"

	libvirt "github.com/digitalocean/go-libvirt"
	"github.com/google/uuid"
)

// State is a domain's libvirt state.
type State int

// The states, as libvirt numbers them.
const (
	StateNoState   State = State(libvirt.DomainNostate)
	StateRunning   State = State(libvirt.DomainRunning)
	StateBlocked   State = State(libvirt.DomainBlocked)
	StatePaused    State = State(libvirt.DomainPaused)
	StateShutdown  State = State(libvirt.DomainShutdown)
	StateShutoff   State = State(libvirt.DomainShutoff)
	StateCrashed   State = State(libvirt.DomainCrashed)
	StateSuspended State = State(libvirt.DomainPmsuspended)
)

func (s State) String() string {
	switch s {
	case StateRunning:
		return "running"
	case StateBlocked:
		return "blocked"
	case StatePaused:
		return "paused"
	case StateShutdown:
		return "shutdown"
	case StateShutoff:
		return "shutoff"
	case StateCrashed:
		return "crashed"
	case StateSuspended:
		return "pmsuspended"
	}
	return "nostate"
}

// Paused reasons that matter to migration.
const (
	ReasonPausedMigration      = int(libvirt.DomainPausedMigration)
	ReasonPausedPostcopy       = int(libvirt.DomainPausedPostcopy)
	ReasonPausedPostcopyFailed = int(libvirt.DomainPausedPostcopyFailed)
)

// DomainState is a state with libvirt's reason code for it.
type DomainState struct {
	State  State
	Reason int
}

// lookup finds a domain by name, or by UUID when the name is one (Nova's
// instance uuid is the domain's uuid).
func (c *Conn) lookup(ctx context.Context, name string) (libvirt.Domain, error) {
	return do(c, ctx, c.timeouts.Query, "lookup-domain", "lookup domain "+name, func() (libvirt.Domain, error) {
		if u, err := uuid.Parse(name); err == nil && len(name) == 36 {
			return c.l.DomainLookupByUUID(libvirt.UUID(u))
		}
		return c.l.DomainLookupByName(name)
	})
}

// DomainState returns the state of the named domain; errdefs.ErrNotFound if
// this host has no such domain.
func (c *Conn) DomainState(ctx context.Context, name string) (DomainState, error) {
	d, err := c.lookup(ctx, name)
	if err != nil {
		return DomainState{}, err
	}
	type sr struct{ s, r int32 }
	v, err := do(c, ctx, c.timeouts.Query, "domain-state", "state of "+name, func() (sr, error) {
		s, r, err := c.l.DomainGetState(d, 0)
		return sr{s, r}, err
	})
	return DomainState{State: State(v.s), Reason: int(v.r)}, err
}

// DomainXML returns the live XML of the named domain (inactive=false) or its
// persistent definition (inactive=true).
func (c *Conn) DomainXML(ctx context.Context, name string, inactive bool) (string, error) {
	d, err := c.lookup(ctx, name)
	if err != nil {
		return "", err
	}
	var flags libvirt.DomainXMLFlags
	if inactive {
		flags = libvirt.DomainXMLInactive
	}
	return do(c, ctx, c.timeouts.Query, "domain-xml", "xml of "+name, func() (string, error) {
		return c.l.DomainGetXMLDesc(d, flags)
	})
}

// MigratableXML returns the live XML of the named domain in the form a
// migration carries (libvirt's migratable dump: no run-time-only details),
// the document Nova rewrites for the destination.
func (c *Conn) MigratableXML(ctx context.Context, name string) (string, error) {
	d, err := c.lookup(ctx, name)
	if err != nil {
		return "", err
	}
	return do(c, ctx, c.timeouts.Query, "migratable-xml", "migratable xml of "+name, func() (string, error) {
		return c.l.DomainGetXMLDesc(d, libvirt.DomainXMLMigratable) // as Nova: no secrets (the journal keeps the result)
	})
}

// Define defines a persistent domain from xml.
func (c *Conn) Define(ctx context.Context, xml string) error {
	_, err := do(c, ctx, c.timeouts.Control, "define", "define domain", func() (libvirt.Domain, error) {
		return c.l.DomainDefineXML(xml)
	})
	return err
}

// DefineAndStart defines a persistent domain from xml and boots it.
func (c *Conn) DefineAndStart(ctx context.Context, xml string) error {
	d, err := do(c, ctx, c.timeouts.Control, "define", "define domain", func() (libvirt.Domain, error) {
		return c.l.DomainDefineXML(xml)
	})
	if err != nil {
		return err
	}
	_, err = do(c, ctx, c.timeouts.Control, "start", "start "+d.Name, func() (struct{}, error) {
		return struct{}{}, c.l.DomainCreate(d)
	})
	return err
}

// Destroy powers the named domain off (no-op when it is not running).
func (c *Conn) Destroy(ctx context.Context, name string) error {
	st, err := c.DomainState(ctx, name)
	if err != nil {
		return err
	}
	if st.State == StateShutoff {
		return nil
	}
	d, err := c.lookup(ctx, name)
	if err != nil {
		return err
	}
	_, err = do(c, ctx, c.timeouts.Control, "destroy", "destroy "+name, func() (struct{}, error) {
		return struct{}{}, c.l.DomainDestroy(d)
	})
	return err
}

// Undefine removes the persistent definition of the named domain.
func (c *Conn) Undefine(ctx context.Context, name string) error {
	d, err := c.lookup(ctx, name)
	if err != nil {
		return err
	}
	_, err = do(c, ctx, c.timeouts.Control, "undefine", "undefine "+name, func() (struct{}, error) {
		return struct{}{}, c.l.DomainUndefineFlags(d, libvirt.DomainUndefineKeepNvram)
	})
	return err
}
