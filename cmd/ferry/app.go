package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/spf13/cobra"

	"opendev.org/x/ferry/config"
	"opendev.org/x/ferry/pkg/errdefs"
	"opendev.org/x/ferry/pkg/openstack"
	"opendev.org/x/ferry/pkg/status"
)

// nova is what the commands ask nova-api: *openstack.Cloud.
type nova interface {
	Server(ctx context.Context, ref string) (openstack.Server, error)
	ServersOnHost(ctx context.Context, host string) ([]openstack.Server, error)
	LiveMigrate(ctx context.Context, serverID, host string, block openstack.BlockMigration) error
	Migrations(ctx context.Context, f openstack.MigrationFilter) ([]openstack.Migration, error)
	FindMigration(ctx context.Context, serverID, ref string) (openstack.Migration, error)
	InProgress(ctx context.Context, serverID string, id int64) (openstack.Progress, error)
	ForceComplete(ctx context.Context, serverID string, id int64) error
	AbortMigration(ctx context.Context, serverID string, id int64) error
}

// ferryds is what the commands ask the hosts' ferryds: *status.Client.
type ferryds interface {
	Migration(ctx context.Context, host, id string) (status.Migration, error)
	Migrations(ctx context.Context, host string) ([]status.Migration, error)
	Plan(ctx context.Context, host string, r status.PlanRequest) (status.Plan, error)
}

// app holds the global flags and, once a command needs them, its clients
// (tests set them directly).
type app struct {
	out, errw  io.Writer
	cloudName  string
	configPath string
	timeout    time.Duration

	nova    nova
	ferryds ferryds
	// conf is ferry.yaml once read (tests set it), confPath where from.
	conf     *config.CLI
	confPath string
	// interval is how often a wait or a watch polls; tests shorten it.
	interval time.Duration
	// terminal says whether progress may redraw one line (stderr is a
	// terminal); nil: ask the OS.
	terminal func() bool
}

// connect opens the cloud and the ferryd locator, unless a test did.
func (a *app) connect(ctx context.Context) error {
	if a.nova != nil {
		return nil
	}
	cli, path, err := a.cliConfig()
	if err != nil {
		return err
	}
	c, err := openstack.OpenCloud(ctx, a.cloudName, 0)
	if err != nil {
		return failed(err)
	}
	a.nova = c
	tlsCfg, err := statusTLS(cli.Ferryd.CAFile, c.TLS())
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	a.ferryds = status.NewClient(status.Locator{Hosts: cli.Ferryd.Hosts, Template: cli.Ferryd.URL}, c.Token, tlsCfg, cli.Ferryd.Timeout.D())
	return nil
}

// cliConfig is ferry.yaml (--config, else the first of config.CLIPath),
// read once; a file that does not parse is a usage error.
func (a *app) cliConfig() (config.CLI, string, error) {
	if a.conf == nil {
		c, path, err := config.LoadCLI(a.configPath)
		if err != nil {
			return config.CLI{}, path, err
		}
		a.conf, a.confPath = &c, path
	}
	return *a.conf, a.confPath, nil
}

// statusTLS trusts ferry.yaml's ca_file, else clouds.yaml's cacert, else
// the system's roots.
func statusTLS(caFile string, cloud *tls.Config) (*tls.Config, error) {
	if caFile == "" {
		if cloud != nil {
			return cloud.Clone(), nil
		}
		return nil, nil
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("ferryd.ca_file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("ferryd.ca_file %s: %w: no PEM certificate in it", caFile, errdefs.ErrInvalidArgument)
	}
	return &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}, nil
}

// start is how every command on the cloud begins: its format checked (f
// nil: it prints no data), --timeout applied, the clients opened.
func (a *app) start(cmd *cobra.Command, f *format) (context.Context, context.CancelFunc, error) {
	if f != nil {
		if err := f.check(); err != nil {
			return nil, nil, err
		}
	}
	ctx, cancel := a.withTimeout(cmd)
	if err := a.connect(ctx); err != nil {
		cancel()
		return nil, nil, err
	}
	return ctx, cancel, nil
}

// startOn is start for a command about one server (name or id): it also
// finds the server.
func (a *app) startOn(cmd *cobra.Command, f *format, server string) (context.Context, context.CancelFunc, openstack.Server, error) {
	ctx, cancel, err := a.start(cmd, f)
	if err != nil {
		return nil, nil, openstack.Server{}, err
	}
	sv, err := a.nova.Server(ctx, server)
	if err != nil {
		cancel()
		return nil, nil, sv, failed(err)
	}
	return ctx, cancel, sv, nil
}

// withTimeout applies --timeout to a command's context.
func (a *app) withTimeout(cmd *cobra.Command) (context.Context, context.CancelFunc) {
	if a.timeout > 0 {
		return context.WithTimeout(cmd.Context(), a.timeout)
	}
	return context.WithCancel(cmd.Context())
}

func (a *app) pollEvery() time.Duration {
	if a.interval > 0 {
		return a.interval
	}
	return 2 * time.Second
}

// format is -f table|json|yaml (and --json) on a read command.
type format struct {
	name   string
	asJSON bool
}

func addFormat(cmd *cobra.Command, f *format) {
	cmd.Flags().StringVarP(&f.name, "format", "f", "table", "output format: table, json or yaml")
	cmd.Flags().BoolVar(&f.asJSON, "json", false, "the same as -f json")
	_ = cmd.RegisterFlagCompletionFunc("format", func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
		return []string{"table", "json", "yaml"}, cobra.ShellCompDirectiveNoFileComp
	})
}

// check refuses an unknown format before the command does anything.
func (f *format) check() error {
	if f.asJSON {
		if f.name != "table" && f.name != "json" {
			return fmt.Errorf("--json and -f %s disagree", f.name)
		}
		f.name = "json"
	}
	switch f.name {
	case "table", "json", "yaml":
		return nil
	}
	return fmt.Errorf("-f %q: want table, json or yaml", f.name)
}

// write prints v in the chosen format; table uses table.
func (f *format) write(w io.Writer, v any, table func(io.Writer)) error {
	switch f.name {
	case "json":
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	case "yaml":
		b, err := config.YAML(v)
		if err != nil {
			return err
		}
		_, err = w.Write(b)
		return err
	}
	table(w)
	return nil
}

// exactArgs checks a command's positional arguments (a usage error).
func exactArgs(n int, names string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != n {
			return fmt.Errorf("%s takes %s (%d arguments), got %d", cmd.CommandPath(), names, n, len(args))
		}
		return nil
	}
}

// notFound reports whether err says the thing is not there.
func notFound(err error) bool { return errors.Is(err, errdefs.ErrNotFound) }
