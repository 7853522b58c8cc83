package virt

import "time"

// Observer learns how libvirt answers, for metrics. Its methods run on the
// callers' goroutines and the watchdog's and must return at once.
type Observer interface {
	// LibvirtCall: a call returned, failed or timed out. call is one of a
	// fixed set of names ("dial", "ping", "job-stats", "domain-state",
	// "migrate", a Control op's name, …), never a domain or a URI.
	LibvirtCall(call string, took time.Duration, err error)
	// WatchdogTrip: a ping outlived the Query timeout and the watchdog cut
	// the connection (a hung libvirtd or a half-open link).
	WatchdogTrip()
}

// DialOption changes how Dial connects.
type DialOption func(*dialOptions)

type dialOptions struct{ obs Observer }

// WithObserver reports the connection's calls and watchdog trips to o.
func WithObserver(o Observer) DialOption { return func(d *dialOptions) { d.obs = o } }

type nopObserver struct{}

func (nopObserver) LibvirtCall(string, time.Duration, error) {}
func (nopObserver) WatchdogTrip()                            {}
