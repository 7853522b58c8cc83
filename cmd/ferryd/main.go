// Command ferryd is ferry's per-host daemon: it serves Nova's
// live-migration RPCs for this compute host and runs the migrations.
//
//	ferryd --config /etc/ferry/ferryd.yaml
//	ferryd cutover --config /etc/ferry/ferryd.yaml [--dry-run] to-companion|to-stock
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
	"sync"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"
	"golang.org/x/term"

	"opendev.org/x/ferry/config"
	"opendev.org/x/ferry/pkg/errdefs"
	"opendev.org/x/ferry/pkg/migration"
	"opendev.org/x/ferry/pkg/virt"
	"opendev.org/x/ferry/rpc/oslo"
)

var version = "dev" // set with -ldflags "-X main.version=..."

var _ migration.Hypervisor = (*virt.Conn)(nil)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "cutover" {
		os.Exit(cutoverMain(os.Args[2:], os.Stdout, os.Stderr))
	}
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

// run serves until ctx ends. Nothing in the start waits for the broker:
// the engine re-attaches to journalled migrations and monitors them while
// RabbitMQ is unreachable, and RPC serving begins when it answers.
func run(ctx context.Context, cfg config.Config, log *logrus.Entry) error {
	log = log.WithField("host", cfg.Host)
	d, err := wire(cfg, log)
	if err != nil {
		return err
	}
	defer d.client.Close()
	if d.notifier != nil {
		defer d.notifier.Close()
	}
	log.WithFields(logrus.Fields{"version": version, "broker": d.broker, "broker_tls": d.brokerTLS, "libvirt": cfg.LibvirtURI}).Info("starting")

	engineCtx, detach := context.WithCancel(context.Background())
	var bg sync.WaitGroup
	bg.Go(func() { _ = d.engine.Run(engineCtx) })
	if d.heartbeat != nil { // native mode: ferryd is the host's compute service
		bg.Go(func() { d.heartbeat.Run(engineCtx) })
	}
	if d.status != nil { // stops after the RPCs, with the engine
		bg.Go(func() {
			if err := d.status.Serve(engineCtx); err != nil {
				log.WithError(err).Error("status API stopped")
			}
		})
	}
	if cfg.Mode == "companion" {
		if err := companionChecks(ctx, cfg, log); err != nil {
			detach()
			bg.Wait()
			if ctx.Err() != nil {
				return nil // stopped while waiting
			}
			return err
		}
	}
	serveDone := make(chan error, 1)
	go func() { serveDone <- d.server.Serve(context.Background()) }() // owner: run (waits below)

	var serveErr error
	select {
	case <-ctx.Done():
		log.Info("stopping: finishing in-flight RPCs, then detaching from running migrations")
	case serveErr = <-serveDone:
	}
	sctx, cancelShutdown := context.WithTimeout(context.Background(), 30*time.Second)
	if err := d.server.Shutdown(sctx); err != nil {
		log.WithError(err).Warn("in-flight RPCs did not finish in 30s")
	}
	cancelShutdown()
	if serveErr == nil {
		serveErr = <-serveDone
	}
	detach()
	bg.Wait()
	if errors.Is(serveErr, oslo.ErrServerClosed) {
		log.Info("stopped; running migrations continue in libvirt and are re-attached at the next start")
		return nil
	}
	return serveErr
}

// companionGrace is how long a missing private exchange or queue of
// nova-compute's is waited for at start (nova-compute may be starting
// beside ferryd); a missing policy is refused at once.
const companionGrace = time.Minute

// companionChecks refuses to serve a host that was not cut over
// (oslo.CheckCompanion). While the broker is unreachable it waits, as
// serving would.
func companionChecks(ctx context.Context, cfg config.Config, log *logrus.Entry) error {
	url, err := oslo.ParseTransportURL(cfg.TransportURL)
	if err != nil {
		return err
	}
	c := oslo.CompanionCheck{URL: url, TLS: cfg.Oslo.TLS(), Exchange: cfg.ControlExchange, NovaComputeExchange: cfg.NovaComputeExchange(),
		NovaComputeQueue: "compute." + cfg.Host}
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	grace := time.Now().Add(companionGrace)
	for {
		err := oslo.CheckCompanion(ctx, c)
		switch {
		case err == nil:
			log.WithField("exchange", c.NovaComputeExchange).Info("companion checks passed: the alternate-exchange policy routes nova-compute's messages to " + cfg.ControlExchange)
			return nil
		case errors.Is(err, oslo.ErrNoAlternate):
			return err
		case errors.Is(err, errdefs.ErrUnavailable):
			log.WithError(err).Warn("companion checks: broker unreachable; retrying")
		case errors.Is(err, errdefs.ErrNotFound) && time.Now().Before(grace):
			log.WithError(err).Warn("companion checks: waiting for nova-compute")
		default:
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}
