// Command shoal runs the Shoal function platform: `shoal up` starts all of
// it on one machine; `shoal gateway` and `shoal runner` run the roles as
// separate processes against any NATS server or cluster; `shoal invoke`
// calls a function and `shoal validate` checks a manifest.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/shoal-dev/shoal"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// The first signal starts a graceful shutdown; restoring the default
	// behaviour then lets a second one end the process at once.
	context.AfterFunc(ctx, stop)
	err := newRootCmd().ExecuteContext(ctx)
	stopCPUProfile()
	writeAllocProfile(rootFlags.memProfile)
	if err != nil {
		fmt.Fprintln(os.Stderr, "shoal: "+err.Error())
		var ec exitCode
		if errors.As(err, &ec) {
			os.Exit(int(ec))
		}
		os.Exit(1)
	}
}

// exitCode is an error that only sets the exit status; its message has
// already been printed.
type exitCode int

func (e exitCode) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

// logger is the process-wide logger, set up from the global flags before
// any command runs.
var logger = slog.Default()

// rootFlags are the global flags, which worker processes inherit.
var rootFlags struct{ logFormat, logLevel, cpuProfile, memProfile string }

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "shoal",
		Short:         "Shoal is a serverless-style function platform on NATS",
		Version:       shoal.Version,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			if err := applyEnv(cmd); err != nil {
				return err
			}
			l, err := newLogger(rootFlags.logFormat, rootFlags.logLevel)
			if err != nil {
				return err
			}
			logger = l
			slog.SetDefault(l)
			if rootFlags.cpuProfile != "" {
				return startCPUProfile(rootFlags.cpuProfile)
			}
			return nil
		},
	}
	root.PersistentFlags().StringVar(&rootFlags.logFormat, "log-format", "text", "log format: text or json")
	root.PersistentFlags().StringVar(&rootFlags.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	root.PersistentFlags().StringVar(&rootFlags.cpuProfile, "cpu-profile", "", "write this process's CPU profile to this file until it exits (shoal up: its workers' to FILE.worker-N)")
	root.PersistentFlags().StringVar(&rootFlags.memProfile, "mem-profile", "", "write the profile of every allocation this process made to this file when it exits (shoal up: its workers' to FILE.worker-N)")
	root.AddCommand(newUpCmd(), newNewCmd(), withEnv(newGatewayCmd()), withEnv(newRunnerCmd()), newInvokeCmd(), newValidateCmd(),
		withEnv(newDeployCmd()), withEnv(newRemoveCmd()), withEnv(newListCmd()), withEnv(newCallsCmd()), withEnv(newInitCmd()), withEnv(newNATSCmd()),
		newTokenCmd(), withEnv(newUserCmd()), withEnv(newSecretCmd()), withEnv(newRollbackCmd()), withEnv(newCodeCmd()), withEnv(newKeyCmd()), newRestartCmd(), newPSCmd(), newVersionCmd(), newBenchCmd())
	return root
}

// envPrefix starts the environment variables that set flags: every flag
// --some-flag of the commands that run in containers (see withEnv) can be
// given as SHOAL_SOME_FLAG instead; the command line wins over the
// environment.
const envPrefix = "SHOAL_"

// envAnnotation marks a command whose flags the environment may set.
const envAnnotation = "shoal/env"

// withEnv lets the environment set cmd's flags, and its subcommands'.
// The roles and the operator commands that act on a deployment opt in;
// their few flags whose name means something else in another of them are
// kept out one by one (noEnv). `up` (whose
// --nats is a listen address, not a server to connect to) and `invoke`
// (whose --data is a request body) do not, so that SHOAL_NATS or
// SHOAL_DATA exported for the others cannot change what they do.
func withEnv(cmd *cobra.Command) *cobra.Command {
	if cmd.Annotations == nil {
		cmd.Annotations = map[string]string{}
	}
	cmd.Annotations[envAnnotation] = "true"
	return cmd
}

// noEnv keeps the environment from setting the named flags of fs: those
// whose name means something else in another command that reads the
// environment (SHOAL_FILE exported for shoal deploy must not pin a runner
// to a file; SHOAL_KEY exported for shoal key publish must not make every
// runner an auth runner).
func noEnv(fs *pflag.FlagSet, names ...string) {
	for _, name := range names {
		if err := fs.SetAnnotation(name, envAnnotation, []string{"off"}); err != nil {
			panic(fmt.Sprintf("noEnv %s: %v", name, err)) // a programming error: the flag must exist
		}
	}
}

// acceptsEnv reports whether the environment may set cmd's flags.
func acceptsEnv(cmd *cobra.Command) bool {
	for c := cmd; c != nil; c = c.Parent() {
		if c.Annotations[envAnnotation] == "true" {
			return true
		}
	}
	return false
}

// envName is the environment variable of a flag.
func envName(flag string) string {
	return envPrefix + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// applyEnv sets every flag of cmd that the command line did not give from
// its environment variable, if set and if cmd accepts the environment.
// Hidden flags are internal and never set this way.
func applyEnv(cmd *cobra.Command) error {
	if !acceptsEnv(cmd) {
		return nil
	}
	var errs []error
	cmd.Flags().VisitAll(func(f *pflag.Flag) {
		if f.Changed || f.Hidden || f.Name == "help" || f.Name == "version" || len(f.Annotations[envAnnotation]) > 0 {
			return
		}
		v, ok := os.LookupEnv(envName(f.Name))
		if !ok {
			return
		}
		if err := cmd.Flags().Set(f.Name, v); err != nil {
			errs = append(errs, fmt.Errorf("%s=%q (--%s): %w", envName(f.Name), v, f.Name, err))
		}
	})
	return errors.Join(errs...)
}

func newLogger(format, level string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(os.Stderr, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(os.Stderr, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: want text or json", format)
}

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  cobra.NoArgs,
		Run: func(cmd *cobra.Command, _ []string) {
			fmt.Fprintln(cmd.OutOrStdout(), "shoal", shoal.Version)
		},
	}
}
