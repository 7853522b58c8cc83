// Command ferry is the admin's CLI for live migration, on Nova's API.
//
//	ferry live-migrate SERVER [--host H] [--block-migration auto|true|false] [--wait]
//	ferry migration list [--server S] [--host H] [--status S]
//	ferry migration show SERVER MIGRATION
//	ferry migration watch SERVER [MIGRATION]
//	ferry migration force-complete|abort SERVER MIGRATION
//	ferry drain HOST [--bandwidth MiB/s] [--max-parallel N]
//	ferry plan SERVER [--host H] [--sample 5s]
//	ferry journal list|show [ID] [--state-dir DIR]
//	ferry completion bash|zsh|fish|powershell
//
// Everything that changes something goes through nova-api (so Nova's
// records stay the truth); what Nova cannot say — ferry's phase, the copy
// set, the network, the actions it took and why — comes from the status API
// of the source host's ferryd (ferry.yaml says where each is) and degrades
// to Nova's view alone, with a note on stderr, when that ferryd cannot be
// reached. The cloud comes from clouds.yaml (--os-cloud, OS_CLOUD,
// OS_CLIENT_CONFIG_FILE), as openstackclient reads it.
//
// Data goes to stdout, everything else to stderr. Every read command takes
// -f table|json|yaml (--json is -f json); JSON and YAML fields are only
// ever added. Exit codes: 0 done; 1 failed (an API refused, or a migration
// waited for ended other than completed); 2 usage.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
)

// Exit codes scripts can rely on.
const (
	exitOK     = 0
	exitFailed = 1
	exitUsage  = 2
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// failure is an error a command returns once its arguments were good: exit
// 1, the message on stderr. Anything else Execute returns is a usage error.
type failure struct{ err error }

func (f failure) Error() string { return f.err.Error() }
func (f failure) Unwrap() error { return f.err }

func failed(err error) error {
	if err == nil {
		return nil
	}
	return failure{err}
}

func run(ctx context.Context, args []string, out, errw io.Writer) int {
	a := &app{out: out, errw: errw}
	root := a.root()
	root.SetArgs(args)
	root.SetOut(out)
	root.SetErr(errw)
	return exitOf(root.ExecuteContext(ctx), errw)
}

// exitOf is a command's exit code, its error said on errw.
func exitOf(err error, errw io.Writer) int {
	var f failure
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &f):
		fmt.Fprintln(errw, "ferry:", f.err)
		return exitFailed
	}
	fmt.Fprintln(errw, "ferry:", err)
	fmt.Fprintln(errw, "see: ferry --help")
	return exitUsage
}

func (a *app) root() *cobra.Command {
	root := &cobra.Command{
		Use:   "ferry",
		Short: "Live migration through Nova's API, with ferry's view of each migration",
		Long: "ferry drives and explains live migrations. Changes go through nova-api; ferry's own record of\n" +
			"each migration comes from the source host's ferryd (its status API, located by ferry.yaml).\n\n" +
			"Exit codes: 0 done; 1 failed (an API refused, or a migration waited for did not complete); 2 usage.",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	pf := root.PersistentFlags()
	pf.StringVar(&a.cloudName, "os-cloud", "", "the cloud in clouds.yaml (default $OS_CLOUD)")
	pf.StringVar(&a.configPath, "config", os.Getenv("FERRY_CONFIG"), "ferry.yaml: where each host's ferryd is (default $FERRY_CONFIG, ~/.config/ferry/ferry.yaml, /etc/ferry/ferry.yaml)")
	pf.DurationVar(&a.timeout, "timeout", 0, "give up after this long (0: never; a migration already running is never aborted by it)")
	root.AddCommand(a.liveMigrateCmd(), a.migrationCmd(), a.drainCmd(), a.planCmd(), a.journalCmd())
	return root
}
