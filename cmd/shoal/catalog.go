package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"

	"github.com/shoal-dev/shoal/functions/auth"
	"github.com/shoal-dev/shoal/manifest"
	"github.com/shoal-dev/shoal/platform/broker"
	"github.com/shoal-dev/shoal/platform/calls"
	"github.com/shoal-dev/shoal/platform/catalog"
	"github.com/shoal-dev/shoal/platform/keyring"
)

// discoveryWait bounds how long a listing waits for runners to answer
// NATS services discovery.
const discoveryWait = time.Second

// jsAttempt bounds one attempt of a JetStream operation that is retried
// until its command's deadline (see broker.Retry).
const jsAttempt = 5 * time.Second

// catalogPoll is how often a gateway or runner looks again for a catalog
// that does not exist yet.
const catalogPoll = 2 * time.Second

// waitForCatalog returns once the function catalog exists on nc: until
// something is deployed, it looks again every 2 s, until ctx is done.
func waitForCatalog(ctx context.Context, nc *nats.Conn, component string) error {
	js, err := jetstream.New(nc)
	if err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	for said := false; ; said = true {
		err := func() error {
			ctx, cancel := context.WithTimeout(ctx, jsAttempt)
			defer cancel()
			_, err := catalog.Open(ctx, js)
			return err
		}()
		if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
			err = catalog.ErrNoCatalog // unanswered: look again
		}
		if !errors.Is(err, catalog.ErrNoCatalog) {
			return err
		}
		if !said {
			logger.Warn("waiting for functions to be deployed (shoal deploy -f fn.yaml)", "component", component, "bucket", catalog.Bucket)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for the function catalog: %w", ctx.Err())
		case <-time.After(catalogPoll):
		}
	}
}

// followCatalog watches the function catalog on nc, waiting for it to
// exist, and applies every new state of it.
func followCatalog(ctx context.Context, nc *nats.Conn, component string, apply func([]catalog.Entry) error) (*catalog.Watcher, error) {
	if err := waitForCatalog(ctx, nc, component); err != nil {
		return nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var w *catalog.Watcher
	err = broker.Retry(ctx, jsAttempt, func(ctx context.Context) error {
		var err error
		w, err = catalog.Watch(ctx, js, logger.With("component", component), apply)
		return err
	})
	return w, err
}

// functionsOf returns the functions of catalog entries.
func functionsOf(entries []catalog.Entry) []manifest.Function {
	fns := make([]manifest.Function, len(entries))
	for i, e := range entries {
		fns[i] = e.Function
	}
	return fns
}

// entriesOf presents a manifest's functions as catalog entries of
// revision 0, for a gateway serving a file.
func entriesOf(m *manifest.Manifest) []catalog.Entry {
	entries := make([]catalog.Entry, len(m.Functions))
	for i, fn := range m.Functions {
		entries[i] = catalog.Entry{Function: fn}
	}
	return entries
}

// functionsStatus answers GET /system/functions: the functions entries
// returns, with the runners serving each, discovered on nc.
func functionsStatus(nc *nats.Conn, entries func() []catalog.Entry) func(context.Context) (any, error) {
	return func(ctx context.Context) (any, error) {
		serving, err := catalog.Serving(ctx, nc, discoveryWait)
		if err != nil {
			return nil, err
		}
		return catalog.Describe(entries(), serving), nil
	}
}

// deployManifest writes m into the catalog on js. It creates the
// platform's state buckets that are missing, with replicas: the (empty)
// signing key bucket and the auth function's users and failed-login
// counters, then the catalog, last: gateways and runners wait for the
// catalog, so when they go on, the others exist with their replicas
// rather than being created with one by the first runner that serves
// auth.
func deployManifest(ctx context.Context, js jetstream.JetStream, m *manifest.Manifest, code *functionCode, prune bool, limits calls.Limits) ([]catalog.Change, error) {
	replicas := limits.Replicas
	// The code first: a definition in the catalog names code that is
	// stored.
	if err := code.upload(ctx, js, replicas, m); err != nil {
		return nil, err
	}
	if _, err := keyring.Create(ctx, js, replicas); err != nil {
		return nil, err
	}
	if _, err := auth.CreateUsers(ctx, js, replicas); err != nil {
		return nil, err
	}
	// The failed-login bucket's max age is the login window of whoever
	// created it (shoal up passes its own): an existing one is left as it
	// is; a new one gets the default window, and runners given a longer
	// --login-window warn.
	if _, err := auth.OpenLimiter(ctx, js, auth.Limits{}); errors.Is(err, jetstream.ErrBucketNotFound) {
		if _, err := auth.CreateLimiter(ctx, js, auth.Limits{}, replicas); err != nil {
			return nil, err
		}
	} else if err != nil {
		return nil, err
	}
	if err := calls.Setup(ctx, js, limits); err != nil {
		return nil, err
	}
	c, err := catalog.Create(ctx, js, replicas)
	if err != nil {
		return nil, err
	}
	return c.Deploy(ctx, m.Functions, prune)
}

// printChanges writes one line per change.
func printChanges(w io.Writer, changes []catalog.Change) {
	for _, ch := range changes {
		fmt.Fprintf(w, "%-9s %s (revision %d)\n", ch.Action, ch.Name, ch.Revision)
	}
}

func newDeployCmd() *cobra.Command {
	var (
		a        adminFlags
		file     string
		prune    bool
		replicas int
		al       asyncLimitFlags
		noBuild  bool
	)
	cmd := &cobra.Command{
		Use:   "deploy",
		Short: "Deploy the functions of a manifest to a running platform",
		Long: `Deploy validates the manifest and writes its functions into the function
catalog (NATS KV bucket ` + catalog.Bucket + `), which every gateway and runner
follows: a new function is routable within a second, a changed one takes
effect from the next request, all without a restart. Functions whose
definition did not change are left alone and keep their revision.

Functions with an http or exec handler run their own code: deploy first
runs each one's build command (unless --no-build) in its source directory,
then uploads the directory to the code store (object store bucket
shoal_code) under the SHA-256 of its archive, and the definition names that
digest. Runners fetch it, start the new version and roll over to it without
dropping requests; unchanged code is not uploaded again.

A manifest with errors changes nothing: every error is printed with its
file:line:col. With --prune, deployed functions that are not in the manifest
are removed.`,
		Example: `  shoal deploy -f fn.yaml
  shoal deploy -f fn.yaml --prune --nats nats://nats:4222 --nats-nkey admin.nk --replicas 3`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if replicas < 0 || replicas > 5 {
				return fmt.Errorf("--replicas %d: want 1 to 5 (0 keeps an existing bucket's)", replicas)
			}
			m, err := loadManifest(file)
			if err != nil {
				return err
			}
			code, err := prepareCode(cmd.Context(), m, !noBuild, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			defer code.close()
			limits, err := al.limits(replicas)
			if err != nil {
				return err
			}
			return a.session(cmd.Context(), func(ctx context.Context, js jetstream.JetStream) error {
				// A cluster that is forming or electing a leader may leave
				// a request unanswered; deploying again is harmless.
				var changes []catalog.Change
				err := broker.Retry(ctx, jsAttempt, func(ctx context.Context) error {
					// Limits set up earlier stay, but for the flags given.
					limits := limits
					cur, ok, err := calls.CurrentLimits(ctx, js)
					if err != nil {
						return err
					}
					if ok {
						if limits, err = al.over(cur, cmd.Flags(), replicas); err != nil {
							return err
						}
					}
					changes, err = deployManifest(ctx, js, m, code, prune, limits)
					return err
				})
				printChanges(cmd.OutOrStdout(), changes)
				return err
			})
		},
	}
	a.register(cmd)
	cmd.Flags().StringVarP(&file, "file", "f", defaultManifest, "function manifest")
	cmd.Flags().BoolVar(&prune, "prune", false, "also remove deployed functions that the manifest does not declare")
	cmd.Flags().BoolVar(&noBuild, "no-build", false, "do not run the functions' build commands before uploading their code")
	cmd.Flags().IntVar(&replicas, "replicas", 0, "replicas of the platform's buckets and streams: 1 on one server, 3 on a cluster (0: keep existing ones', 1 for new ones)")
	al.register(cmd.Flags())
	return cmd
}

func newRemoveCmd() *cobra.Command {
	var a adminFlags
	cmd := &cobra.Command{
		Use:   "rm NAME...",
		Short: "Remove deployed functions: they answer 404 from the next request",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.session(cmd.Context(), func(ctx context.Context, js jetstream.JetStream) error {
				c, err := catalog.Open(ctx, js)
				if err != nil {
					return err
				}
				var errs []error
				for _, name := range args {
					rev, err := c.Remove(ctx, name)
					if errors.Is(err, catalog.ErrNotDeployed) {
						errs = append(errs, fmt.Errorf("function %q is not deployed", name))
						continue
					}
					if err != nil {
						errs = append(errs, err)
						continue
					}
					fmt.Fprintf(cmd.OutOrStdout(), "removed   %s (revision %d)\n", name, rev)
				}
				return errors.Join(errs...)
			})
		},
	}
	a.register(cmd)
	return cmd
}

func newListCmd() *cobra.Command {
	var (
		a      adminFlags
		asJSON bool
	)
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List the deployed functions with their revision and the runners serving each",
		Long: `List the functions in the catalog with their revision and the number of
runners serving each now, found through NATS services discovery. A function
no runner serves (0) answers 503 no_runner when invoked.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.session(cmd.Context(), func(ctx context.Context, js jetstream.JetStream) error {
				c, err := catalog.Open(ctx, js)
				if err != nil {
					return err
				}
				entries, bad, err := c.List(ctx)
				if err != nil {
					return err
				}
				serving, err := catalog.Serving(ctx, js.Conn(), discoveryWait)
				if err != nil {
					return err
				}
				status := catalog.Describe(entries, serving)
				if asJSON {
					enc := json.NewEncoder(cmd.OutOrStdout())
					enc.SetIndent("", "  ")
					return enc.Encode(status)
				}
				tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "NAME\tREVISION\tRUNNERS\tACCESS\tTIMEOUT\tDESCRIPTION")
				for _, s := range status {
					access := "public"
					if !s.Public {
						access = "token"
						if len(s.Permissions) > 0 {
							access = strings.Join(s.Permissions, ",")
						}
					}
					fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%s\t%s\n", s.Name, s.Revision, s.Runners, access, s.Timeout, s.Description)
				}
				for _, name := range slices.Sorted(maps.Keys(bad)) {
					fmt.Fprintf(tw, "%s\t\t0\t\t\tUNREADABLE: %v\n", name, bad[name])
				}
				if err := tw.Flush(); err != nil {
					return err
				}
				for _, s := range status {
					for _, why := range s.Unservable {
						fmt.Fprintf(cmd.OutOrStdout(), "%s is not servable on %s\n", s.Name, why)
					}
				}
				return nil
			})
		},
	}
	a.register(cmd)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON, as GET /system/functions does")
	return cmd
}
