package main

import (
	"context"
	"path/filepath"
	"slices"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"

	"opendev.org/x/ferry/config"
	"opendev.org/x/ferry/pkg/hostnet"
	"opendev.org/x/ferry/pkg/migration"
	"opendev.org/x/ferry/pkg/openstack"
	"opendev.org/x/ferry/pkg/status"
	"opendev.org/x/ferry/pkg/virt"
	"opendev.org/x/ferry/rpc/nova"
	"opendev.org/x/ferry/rpc/oslo"
)

// daemon is what run serves: built in one pass, dependencies first (the
// broker client, Nova's records, the engine, the endpoints), without
// touching the network.
type daemon struct {
	broker    string // the transport URL without its password
	brokerTLS bool   // whether it is dialled over TLS (the URL's query over oslo_messaging_rabbit's ssl)
	client    *oslo.Client
	engine    *migration.Manager
	server    *oslo.Server
	heartbeat *nova.Heartbeat
	notifier  *oslo.Notifier // companion mode, when notifications are configured
	status    *status.Server // nil when status.listen is off
}

// operatorCasts are served in a lane of their own, so that an abort or a
// force-complete is never queued behind other calls.
var operatorCasts = []string{"live_migration_abort", "live_migration_force_complete"}

func wire(cfg config.Config, log *logrus.Entry) (*daemon, error) {
	url, err := oslo.ParseTransportURL(cfg.TransportURL)
	if err != nil {
		return nil, err
	}
	queues := queueOptions(cfg)
	var engineRef atomic.Pointer[migration.Manager] // the client is built before the engine it wakes
	var destRef atomic.Pointer[nova.Destination]
	obs := newMetrics(&engineRef, &destRef)
	client, err := oslo.NewClient(context.Background(), oslo.ClientOptions{URL: url, TLS: cfg.Oslo.TLS(), Exchange: cfg.ControlExchange, Observer: obs,
		Timeout: cfg.Oslo.ResponseTimeout.D(), Heartbeat: cfg.Oslo.Heartbeat.D(), Queues: queues, Log: log,
		OnResumed: func() { // the broker is back: what Nova is owed goes now
			if e := engineRef.Load(); e != nil {
				e.Kick()
			}
		}})
	if err != nil {
		return nil, err
	}
	d := &daemon{broker: url.String(), client: client}
	if o, err := url.TLSOptions(cfg.Oslo.TLS()); err == nil { // config.Validate refused the errors
		d.brokerTLS = o.Enabled
	}
	ok := false
	defer func() {
		if !ok {
			client.Close()
		}
	}()

	dialer := func(ctx context.Context, uri string) (*virt.Conn, error) {
		return virt.Dial(ctx, uri, virt.Timeouts{}, virt.WithObserver(obs))
	}
	local := func(ctx context.Context) (nova.Libvirt, error) { return dialer(ctx, cfg.LibvirtURI) }
	peers := nova.Peers{Host: cfg.Host, Scheme: cfg.Migration.Scheme, Configured: map[string]nova.Peer{}}
	for h, p := range cfg.Peers {
		peers.Configured[h] = nova.Peer{Management: p.Management, TLSName: p.TLSName, LibvirtURI: p.LibvirtURI}
	}
	m := cfg.Migration
	imageCache := filepath.Join(cfg.InstancesPath, cfg.ImageCacheDir)
	cond := nova.NewConductor(client)
	cond.Timeout = cfg.Oslo.ResponseTimeout.D()
	computes := nova.NewComputes(client, cfg.Oslo.ResponseTimeout.D(), cfg.Oslo.LongTimeout.D())

	companion := cfg.Mode == "companion"
	bo := nova.BookOptions{Host: cfg.Host, InstancesPath: cfg.InstancesPath, ReleaseInbound: !companion,
		Log: log.WithField("component", "bookkeeping")}
	var plugs *nova.Plugs
	if companion {
		plugs = &nova.Plugs{Log: log.WithField("component", "plug-events")}
		bo.Companion, bo.Ports, bo.Plugs = true, neutron(cfg, log), plugs
		bo.PlugTimeout, bo.PlugFatal = cfg.Companion.VIFPluggingTimeout.D(), cfg.Companion.VIFPluggingIsFatal
		kick := func() {
			if e := engineRef.Load(); e != nil {
				e.Kick()
			}
		}
		if bo.Notify, d.notifier, err = notifications(cfg, url, queues, log, kick); err != nil {
			return nil, err
		}
		defer func() {
			if !ok && d.notifier != nil {
				d.notifier.Close()
			}
		}()
	} else {
		warnNativeNotifications(cfg, log)
	}
	book := nova.NewBookkeeper(bo, cond, computes, placement(cfg, log), local)
	if d.engine, err = migration.NewManager(migration.Options{StateDir: cfg.StateDir, LocalURI: cfg.LibvirtURI,
		Dial:        func(ctx context.Context, uri string) (migration.Hypervisor, error) { return dialer(ctx, uri) },
		Destination: book, Records: book, MaxOutbound: m.MaxConcurrent, UpgradeState: nova.UpgradeState,
		Retention: cfg.JournalRetention.D(), CutStreams: cutStreams, Observer: obs, Log: log.WithField("component", "engine")}); err != nil {
		return nil, err
	}
	engineRef.Store(d.engine)

	source := nova.NewSource(nova.SourceOptions{Host: cfg.Host, InstancesPath: cfg.InstancesPath, ImageCache: imageCache,
		Bandwidth: uint64(m.Bandwidth), NativeTLS: m.NativeTLS, Parallel: m.ParallelConns, Compression: m.Compression,
		Policy: policy(m), CompletionPerGiB: time.Duration(m.CompletionTimeout) * time.Second, Companion: companion,
		Log: log.WithField("component", "source")}, peers, local, cond, d.engine)
	dest, err := nova.NewDestination(nova.DestOptions{Host: cfg.Host, InstancesPath: cfg.InstancesPath, ImageCache: imageCache,
		InboundAddr: cfg.InboundAddr, StateDir: cfg.StateDir, MaxInbound: m.MaxInbound, InboundHold: m.InboundHold.D(),
		Images: glance(cfg, log), Log: log.WithField("component", "destination")}, peers, local,
		func(ctx context.Context, uri string) (nova.Libvirt, error) { return dialer(ctx, uri) }, computes, cond)
	if err != nil {
		return nil, err
	}
	destRef.Store(dest)
	events := &nova.Events{Host: cfg.Host, Cond: cond, Log: log.WithField("component", "events")}
	so := oslo.ServerOptions{URL: url, TLS: cfg.Oslo.TLS(), Exchange: cfg.ControlExchange, Server: cfg.Host,
		Queues: queues, Prefetch: prefetch(cfg, log), Heartbeat: cfg.Oslo.Heartbeat.D(), MaxInFlight: cfg.Oslo.ThreadPoolSize,
		DedupSize: cfg.Oslo.DedupSize, Priority: operatorCasts, Failure: nova.Failure, Observer: obs, Log: log}
	owned := nova.Native
	var handler oslo.Handler
	if companion {
		// ferryd's own queue; what it does not own goes on to nova-compute's,
		// which is bound to nova-compute's private exchange only.
		owned = append(slices.Clone(cfg.Companion.Owned), "external_instance_event")
		so.Queue = cfg.CompanionQueue()
		so.Forward = &oslo.Forward{To: "compute." + cfg.Host, Owned: cfg.Companion.Owned, Tapped: []string{"external_instance_event"}}
		handler, err = nova.Handler(owned, events, source.Methods(), plugs.Methods())
	} else {
		handler, err = nova.Handler(owned, events, source.Methods(), dest.Methods(), nova.HostMethods())
		// native mode: ferryd is the host's compute service
		d.heartbeat = &nova.Heartbeat{Host: cfg.Host, Cond: cond, Interval: cfg.ReportInterval.D(), Log: log.WithField("component", "heartbeat")}
	}
	if err != nil {
		return nil, err
	}
	if d.server, err = oslo.NewServer(so, handler); err != nil {
		return nil, err
	}
	plan := &planner{cfg: cfg, policy: policy(m), source: source, engine: d.engine,
		dial: func(ctx context.Context) (*virt.Conn, error) { return dialer(ctx, cfg.LibvirtURI) }}
	if d.status, err = statusServer(cfg, d.engine, plan, obs, log); err != nil { // binds: the last step
		return nil, err
	}
	ok = true
	return d, nil
}

// queueOptions are the deployment's [oslo_messaging_rabbit] queue flags.
func queueOptions(cfg config.Config) oslo.QueueOptions {
	return oslo.QueueOptions{Durable: cfg.Oslo.DurableQueues, AutoDelete: cfg.Oslo.AutoDelete,
		Quorum: cfg.Oslo.QuorumQueue, HA: cfg.Oslo.HAQueues}
}

// neutron is how companion mode moves port bindings.
func neutron(cfg config.Config, log *logrus.Entry) nova.Ports {
	return openstack.NewNeutron(auth(cfg.Neutron), cfg.Oslo.ResponseTimeout.D(), log.WithField("component", "neutron"))
}

func auth(k config.Keystone) openstack.Auth {
	return openstack.Auth{AuthType: k.AuthType, AuthURL: k.AuthURL, Username: k.Username, Password: k.Password,
		ProjectName: k.ProjectName, UserDomainName: k.UserDomainName, ProjectDomainName: k.ProjectDomainName,
		RegionName: k.RegionName, Interface: k.ValidInterfaces, EndpointOverride: k.EndpointOverride}
}

func policy(m config.Migration) migration.Policy {
	return migration.Policy{DowntimeBudget: time.Duration(m.Downtime) * time.Millisecond,
		InitialDowntime: m.InitialDowntime.D(), StallLimit: m.StallLimit.D(), TimeoutAction: m.TimeoutAction,
		PostCopy: m.PermitPostCopy, AutoConverge: m.PermitAutoConv, AutoConvergeGrace: m.AutoConvergeGrace.D(),
		AutoConvergeInitial: m.AutoConvergeInitial, AutoConvergeIncrement: m.AutoConvergeIncrement, Pause: m.PermitPause}
}

// glance is where a native destination fetches kernel and ramdisk images:
// nova.conf's [glance] credentials, or Placement's with Glance from the
// catalog; nil when neither reaches Keystone.
func glance(cfg config.Config, log *logrus.Entry) nova.Images {
	g := cfg.Glance
	if g.AuthType == "" {
		g = cfg.Placement
		g.EndpointOverride = ""
	}
	if g.AuthType != "password" && (g.AuthType != "noauth" || g.EndpointOverride == "") {
		return nil
	}
	return openstack.NewGlance(auth(g), cfg.Oslo.ResponseTimeout.D(), log.WithField("component", "glance"))
}

// placement is how the bookkeeping reaches Placement; nil leaves the
// allocations to an operator.
func placement(cfg config.Config, log *logrus.Entry) nova.Allocations {
	p := cfg.Placement
	if p.AuthType == "none" {
		log.Warn("placement.auth_type is none: the allocations a live migration holds are not settled; each migration leaves Nova's usage of its source host wrong until an operator fixes it")
		return nil
	}
	return openstack.NewPlacement(auth(p), cfg.Oslo.ResponseTimeout.D(), log.WithField("component", "placement"))
}

// prefetch is the broker's in-flight window: the handlers plus a reserve
// for the operators' lane. A deployment's rabbit_qos_prefetch_count below
// that would queue an abort behind stuck calls, so it only ever raises it.
func prefetch(cfg config.Config, log *logrus.Entry) int {
	p := cfg.Oslo.Prefetch
	floor := cfg.Oslo.ThreadPoolSize + 16
	if p != 0 && p < floor {
		log.WithFields(logrus.Fields{"rabbit_qos_prefetch_count": p, "used": floor}).
			Warn("rabbit_qos_prefetch_count is below ferryd's handlers plus the operators' lane; using that instead")
		return floor
	}
	return p
}

// cutStreams closes the connections of the instance's QEMU to a
// destination's migration address (migration.Options.CutStreams).
func cutStreams(ctx context.Context, instanceUUID, addr string) (int, error) {
	pid, err := virt.QEMUPID("/proc", instanceUUID)
	if err != nil {
		return 0, err
	}
	return hostnet.CloseStreams(ctx, pid, addr)
}
