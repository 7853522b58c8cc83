// Command ferryd is ferry's per-host daemon: it serves Nova's
// live-migration RPCs for this compute host and runs the migrations.
//
//	ferryd --config /etc/ferry/ferryd.yaml
//
// SIGTERM (or SIGINT) stops taking RPCs, lets the ones in flight finish and
// detaches from running migrations; the next start re-attaches to them.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"
	"golang.org/x/term"

	"opendev.org/x/ferry/config"
	"opendev.org/x/ferry/pkg/migration"
	"opendev.org/x/ferry/pkg/openstack"
	"opendev.org/x/ferry/pkg/virt"
	"opendev.org/x/ferry/rpc/nova"
	"opendev.org/x/ferry/rpc/oslo"
)

var version = "dev" // set with -ldflags "-X main.version=..."

var _ migration.Hypervisor = (*virt.Conn)(nil)

func main() {
	path := flag.String("config", "/etc/ferry/ferryd.yaml", "configuration file")
	showVersion := flag.Bool("version", false, "print the version and exit")
	flag.Parse()
	if *showVersion {
		fmt.Println("ferryd", version)
		return
	}
	cfg, err := config.Load(*path)
	if err != nil {
		fmt.Fprintln(os.Stderr, "ferryd:", err)
		os.Exit(2)
	}
	log := newLogger(cfg.Log)
	cfg.ApplyMaxProcs()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := run(ctx, cfg, log); err != nil {
		log.WithError(err).Error("ferryd stopped")
		os.Exit(1)
	}
}

func newLogger(c config.Log) *logrus.Entry {
	l := logrus.New()
	l.SetOutput(os.Stderr)
	if c.Format == "json" || (c.Format == "" && !term.IsTerminal(int(os.Stderr.Fd()))) {
		l.SetFormatter(&logrus.JSONFormatter{})
	}
	lvl, _ := logrus.ParseLevel(c.Level)
	l.SetLevel(lvl)
	return logrus.NewEntry(l).WithField("service", "ferryd")
}

func run(ctx context.Context, cfg config.Config, log *logrus.Entry) error {
	url, err := oslo.ParseTransportURL(cfg.TransportURL)
	if err != nil {
		return err
	}
	log = log.WithField("host", cfg.Host)
	log.WithFields(logrus.Fields{"version": version, "broker": url.String(), "libvirt": cfg.LibvirtURI}).Info("starting")
	queues := oslo.QueueOptions{Durable: cfg.Oslo.DurableQueues, AutoDelete: cfg.Oslo.AutoDelete,
		Quorum: cfg.Oslo.QuorumQueue, HA: cfg.Oslo.HAQueues}
	cctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	client, err := oslo.NewClient(cctx, oslo.ClientOptions{URL: url, Exchange: cfg.ControlExchange,
		Timeout: cfg.Oslo.ResponseTimout.D(), Heartbeat: cfg.Oslo.Heartbeat.D(), Queues: queues, Log: log})
	cancel()
	if err != nil {
		return err
	}
	defer client.Close()

	dialer := func(ctx context.Context, uri string) (*virt.Conn, error) { return virt.Dial(ctx, uri, virt.Timeouts{}) }
	peers := map[string]nova.Peer{}
	for h, p := range cfg.Peers {
		peers[h] = nova.Peer{Management: p.Management, TLSName: p.TLSName, LibvirtURI: p.LibvirtURI}
	}
	m := cfg.Migration
	var allocations nova.Allocations
	if p := cfg.Placement; p.AuthType != "none" {
		allocations = openstack.NewPlacement(openstack.Auth{AuthType: p.AuthType, AuthURL: p.AuthURL, Username: p.Username,
			Password: p.Password, ProjectName: p.ProjectName, UserDomainName: p.UserDomainName,
			ProjectDomainName: p.ProjectDomainName, RegionName: p.RegionName, Interface: p.ValidInterfaces,
			EndpointOverride: p.EndpointOverride}, cfg.Oslo.ResponseTimout.D())
	} else {
		log.Warn("placement.auth_type is none: the allocations a live migration holds are not settled; each migration leaves Nova's usage of its source host wrong until an operator fixes it")
	}
	compute := nova.NewCompute(nova.Options{
		Host: cfg.Host, InstancesPath: cfg.InstancesPath, ImageCache: filepath.Join(cfg.InstancesPath, cfg.ImageCacheDir), InboundAddr: cfg.InboundAddr, Peers: peers,
		Scheme: m.Scheme, NativeTLS: m.NativeTLS, Bandwidth: uint64(m.Bandwidth), Parallel: m.ParallelConns,
		Policy: migration.Policy{DowntimeBudget: time.Duration(m.Downtime) * time.Millisecond,
			InitialDowntime: m.InitialDowntime.D(), StallLimit: m.StallLimit.D(), TimeoutAction: m.TimeoutAction,
			PostCopy: m.PermitPostCopy, AutoConverge: m.PermitAutoConv, AutoConvergeGrace: m.AutoConvergeGrace.D(),
			Pause: m.PermitPause},
		CompletionPerGiB: time.Duration(m.CompletionTimeout) * time.Second, MaxInbound: m.MaxInbound,
		InboundHold: m.InboundHold.D(), CallTimeout: cfg.Oslo.ResponseTimout.D(), LongTimeout: cfg.Oslo.LongTimeout.D(),
		Log: log.WithField("component", "compute"), Placement: allocations,
	},
		func(ctx context.Context) (nova.Libvirt, error) { return dialer(ctx, cfg.LibvirtURI) },
		func(ctx context.Context, uri string) (nova.Libvirt, error) { return dialer(ctx, uri) },
		client)
	engine, err := migration.NewManager(migration.Options{StateDir: cfg.StateDir, LocalURI: cfg.LibvirtURI,
		Dial:  func(ctx context.Context, uri string) (migration.Hypervisor, error) { return dialer(ctx, uri) },
		Hooks: compute, MaxOutbound: m.MaxConcurrent, Log: log.WithField("component", "engine")})
	if err != nil {
		return err
	}
	compute.SetEngine(engine)
	srv, err := oslo.NewServer(oslo.ServerOptions{URL: url, Exchange: cfg.ControlExchange, Server: cfg.Host,
		Queues: queues, Prefetch: cfg.Oslo.Prefetch, Heartbeat: cfg.Oslo.Heartbeat.D(), Failure: nova.Failure,
		Log: log}, compute.Handler())
	if err != nil {
		return err
	}

	engineCtx, detach := context.WithCancel(context.Background())
	engineDone := make(chan error, 1)
	go func() { engineDone <- engine.Run(engineCtx) }() // owner: run (waits below)
	serveDone := make(chan error, 1)
	go func() { serveDone <- srv.Serve(context.Background()) }() // owner: run (waits below)

	var serveErr error
	select {
	case <-ctx.Done():
		log.Info("stopping: finishing in-flight RPCs, then detaching from running migrations")
	case serveErr = <-serveDone:
	}
	sctx, cancelShutdown := context.WithTimeout(context.Background(), 30*time.Second)
	if err := srv.Shutdown(sctx); err != nil {
		log.WithError(err).Warn("in-flight RPCs did not finish in 30s")
	}
	cancelShutdown()
	if serveErr == nil {
		serveErr = <-serveDone
	}
	detach()
	<-engineDone
	if errors.Is(serveErr, oslo.ErrServerClosed) {
		log.Info("stopped; running migrations continue in libvirt and are re-attached at the next start")
		return nil
	}
	return serveErr
}
