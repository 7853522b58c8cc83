package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os/signal"
	"syscall"

	"github.com/sirupsen/logrus"

	"opendev.org/x/ferry/config"
	"opendev.org/x/ferry/pkg/cutover"
	"opendev.org/x/ferry/rpc/oslo"
)

const cutoverUsage = `usage: ferryd cutover --config FILE [--dry-run] to-companion|to-stock

Moves this host between the stock shape and companion mode (README,
"Companion mode"): to-companion stops nova-compute, gives ferryd's queue the
host's compute traffic, sets the alternate-exchange policy and starts
nova-compute on its private exchange; to-stock (after stopping ferryd)
undoes it. Every step can be run again after a failure. Exit status: 0 done,
1 a step failed (it is named), 2 a usage or configuration error.
`

// cutoverMain is `ferryd cutover`; it returns the exit status.
func cutoverMain(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("ferryd cutover", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, cutoverUsage) }
	path := fs.String("config", "/etc/ferry/ferryd.yaml", "configuration file")
	dry := fs.Bool("dry-run", false, "print the steps, change nothing")
	var pos []string
	for { // flags may come before or after the direction
		if err := fs.Parse(args); err != nil {
			return 2
		}
		if fs.NArg() == 0 {
			break
		}
		pos, args = append(pos, fs.Arg(0)), fs.Args()[1:]
	}
	if len(pos) != 1 {
		fmt.Fprint(stderr, cutoverUsage)
		return 2
	}
	dir, err := cutover.ParseDirection(pos[0])
	if err != nil {
		fmt.Fprintf(stderr, "ferryd cutover: %v\n%s", err, cutoverUsage)
		return 2
	}
	cfg, err := config.Load(*path)
	if err != nil {
		fmt.Fprintln(stderr, "ferryd cutover:", err)
		return 2
	}
	co := cfg.Companion.CutOver
	raw := co.TransportURL
	if raw == "" {
		raw = cfg.TransportURL
	}
	url, err := oslo.ParseTransportURL(raw)
	if err != nil {
		fmt.Fprintln(stderr, "ferryd cutover:", err)
		return 2
	}
	if co.NovaComputeConfig == "" {
		fmt.Fprintln(stderr, "ferryd cutover: companion.cutover.nova_compute_config: required (the nova-compute configuration file whose control_exchange is set)")
		return 2
	}
	f := cutover.Facts{Host: cfg.Host, Exchange: cfg.ControlExchange, NovaComputeExchange: cfg.NovaComputeExchange(),
		FerrydQueue: cfg.CompanionQueue(), VHost: url.VHost, PolicyPriority: co.PolicyPriority,
		NovaComputeConfig: co.NovaComputeConfig, Stop: co.Stop, Start: co.Start}
	steps := cutover.Plan(dir, f)
	if *dry {
		for i, s := range steps {
			fmt.Fprintf(stdout, "%d. %s\n", i+1, s)
		}
		return 0
	}
	log := newLogger(cfg.Log).WithFields(logrus.Fields{"host": cfg.Host, "command": "cutover " + string(dir)})
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := runCutover(ctx, cfg, url, steps, log); err != nil {
		fmt.Fprintln(stderr, "ferryd cutover:", err)
		return 1
	}
	log.WithField("broker", url.String()).Info("cut-over done")
	return 0
}

func runCutover(ctx context.Context, cfg config.Config, url oslo.TransportURL, steps []cutover.Step, log *logrus.Entry) error {
	a, err := oslo.DialAdmin(ctx, oslo.AdminOptions{URL: url, TLS: cfg.Oslo.TLS(), Exchange: cfg.ControlExchange, Queues: queueOptions(cfg)})
	if err != nil {
		return err
	}
	defer a.Close()
	e := &cutover.Executor{Broker: adminBroker{a, cfg.ControlExchange},
		Policies: cutover.Rabbitmqctl{Argv: cfg.Companion.CutOver.Rabbitmqctl, Run: cutover.Exec},
		Run:      cutover.Exec, Options: cutover.INIFile{}, Log: log}
	return e.Execute(ctx, steps)
}

// adminBroker is rpc/oslo's Admin as the cut-over's Broker.
type adminBroker struct {
	a        *oslo.Admin
	exchange string // the Admin's: Declare binds to it
}

func (b adminBroker) Declare(ctx context.Context, queue, exchange, key string) error {
	if exchange != b.exchange {
		return fmt.Errorf("declare %s: bound to %s, but the broker admin declares on %s", queue, exchange, b.exchange)
	}
	return b.a.Declare(ctx, queue, key)
}

func (b adminBroker) Unbind(ctx context.Context, queue, exchange, key string) error {
	return b.a.Unbind(ctx, queue, exchange, key)
}

func (b adminBroker) Inspect(ctx context.Context, queue string) (cutover.QueueInfo, error) {
	q, err := b.a.Inspect(ctx, queue)
	return cutover.QueueInfo{Messages: q.Messages, Consumers: q.Consumers}, err
}

func (b adminBroker) Move(ctx context.Context, from, to string) (cutover.Moved, error) {
	m, err := b.a.Move(ctx, from, to)
	return cutover.Moved{Messages: m.Messages, Duplicates: m.Duplicates}, err
}

func (b adminBroker) DeleteQueueIfEmpty(ctx context.Context, queue string) error {
	return b.a.DeleteQueueIfEmpty(ctx, queue)
}
