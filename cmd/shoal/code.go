package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/shoal-dev/shoal/manifest"
	"github.com/shoal-dev/shoal/platform/bundle"
	"github.com/shoal-dev/shoal/platform/catalog"
	"github.com/shoal-dev/shoal/platform/launcher"
)

// functionCode is the code of a manifest's functions that run as
// processes: each source directory built and packed once, whatever
// number of functions share it.
type functionCode struct {
	// bundles by source directory.
	bundles map[string]*bundle.Bundle
	// out receives the progress of the upload.
	out io.Writer
}

// close removes the packed archives.
func (c *functionCode) close() {
	if c == nil {
		return
	}
	for _, b := range c.bundles {
		if err := b.Close(); err != nil {
			logger.Warn("cannot remove a packed archive", "error", err)
		}
	}
}

// prepareCode runs the build command of each function of m that runs as
// processes (unless build is false), in its source directory, with its
// output on w, then packs each source directory. It returns nil when no
// function runs as processes.
func prepareCode(ctx context.Context, m *manifest.Manifest, build bool, w io.Writer) (*functionCode, error) {
	code := &functionCode{bundles: map[string]*bundle.Bundle{}, out: w}
	built := map[string]bool{} // source and command already built
	for _, fn := range m.Functions {
		if !fn.Handler.RunsProcess() {
			continue
		}
		if key := fn.Process.Source + "\x00" + strings.Join(fn.Process.Build, "\x00"); build && len(fn.Process.Build) > 0 && !built[key] {
			built[key] = true
			if err := runBuild(ctx, fn, w); err != nil {
				code.close()
				return nil, err
			}
		}
	}
	for _, fn := range m.Functions {
		src := fn.Process.Source
		if !fn.Handler.RunsProcess() || code.bundles[src] != nil {
			continue
		}
		b, err := bundle.Pack(src, bundle.PackOptions{})
		if err != nil {
			code.close()
			return nil, fmt.Errorf("function %q: pack %s: %w", fn.Name, src, err)
		}
		code.bundles[src] = b
	}
	if len(code.bundles) == 0 {
		return nil, nil
	}
	return code, nil
}

// runBuild runs a function's build command in its source directory.
func runBuild(ctx context.Context, fn manifest.Function, w io.Writer) error {
	argv := fn.Process.Build
	fmt.Fprintf(w, "building %s: %s (in %s)\n", fn.Name, strings.Join(argv, " "), fn.Process.Source)
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Dir = fn.Process.Source
	cmd.Stdout, cmd.Stderr = w, w
	cmd.WaitDelay = 5 * time.Second
	start := time.Now()
	if err := cmd.Run(); err != nil {
		var exitErr *exec.ExitError
		if errors.As(err, &exitErr) {
			return fmt.Errorf("function %q: build %q failed (%v); nothing was deployed", fn.Name, strings.Join(argv, " "), exitErr.ProcessState)
		}
		return fmt.Errorf("function %q: build %q: %w; nothing was deployed", fn.Name, strings.Join(argv, " "), err)
	}
	fmt.Fprintf(w, "built %s in %s\n", fn.Name, time.Since(start).Round(time.Millisecond))
	return nil
}

// upload stores the packed code in the code store on js (created with
// replicas if missing) and sets each function's Code in m.
func (c *functionCode) upload(ctx context.Context, js jetstream.JetStream, replicas int, m *manifest.Manifest) error {
	if c == nil {
		return nil
	}
	store, err := bundle.Create(ctx, js, replicas)
	if err != nil {
		return err
	}
	done := map[string]bool{}
	for i, fn := range m.Functions {
		b := c.bundles[fn.Process.Source]
		if b == nil {
			continue
		}
		if !done[fn.Process.Source] {
			done[fn.Process.Source] = true
			uploaded, err := store.Put(ctx, b, fn.Name)
			if err != nil {
				return fmt.Errorf("function %q: upload its code: %w", fn.Name, err)
			}
			if uploaded {
				fmt.Fprintf(c.out, "uploaded  %s code %s (%d bytes, %d entries)\n", fn.Name, b.Digest, b.Size, b.Files)
			}
		}
		m.Functions[i].Process.Code = manifest.CodeRef{Digest: string(b.Digest), Size: b.Size}
	}
	return nil
}

// processFlags configure how a runner runs functions as processes.
type processFlags struct {
	cacheDir     string
	cgroupParent string
}

func (f *processFlags) register(fs *pflag.FlagSet, cacheHelp string) {
	fs.StringVar(&f.cacheDir, "code-cache", "", cacheHelp)
	fs.StringVar(&f.cgroupParent, "cgroup-parent", "", "a cgroup v2 directory delegated to this runner, for the cgroups that limit functions' memory and CPU (default: the runner's own cgroup when usable, else rlimits)")
}

// args passes the flags on to shoal up's workers.
func (f *processFlags) args() []string {
	var out []string
	if f.cacheDir != "" {
		out = append(out, "--code-cache", f.cacheDir)
	}
	if f.cgroupParent != "" {
		out = append(out, "--cgroup-parent", f.cgroupParent)
	}
	return out
}

// launcher returns what starts a runner's functions as processes, with
// the code and secret stores on nc.
func (f *processFlags) launcher(nc *nats.Conn) (*launcher.Launcher, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	dir := f.cacheDir
	if dir == "" {
		dir = launcher.DefaultCacheDir()
	}
	return launcher.New(launcher.Config{
		JetStream: js, CacheDir: dir, CgroupParent: f.cgroupParent,
		MaxOutput: max(int(nc.MaxPayload())-replyHeaderRoom, 0),
		Logger:    logger.With("component", "function"),
	})
}

// replyHeaderRoom is kept free of a NATS message for an exec function's
// answer headers, as the runner keeps for every answer.
const replyHeaderRoom = 64 << 10

// codeStored returns a check that a definition's code is still in the
// code store, for rollbacks.
func codeStored(ctx context.Context, js jetstream.JetStream) func(manifest.Function) error {
	return func(fn manifest.Function) error {
		if !fn.Handler.RunsProcess() {
			return nil
		}
		d, err := bundle.ParseDigest(fn.Process.Code.Digest)
		if err != nil {
			return err
		}
		store, err := bundle.Open(ctx, js)
		if err != nil {
			return err
		}
		ok, err := store.Has(ctx, d)
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("its code %s is no longer stored (removed by shoal code gc?); deploy that version's source again", d)
		}
		return nil
	}
}

func newRollbackCmd() *cobra.Command {
	var (
		a        adminFlags
		revision uint64
		list     bool
	)
	cmd := &cobra.Command{
		Use:   "rollback NAME",
		Short: "Deploy a function's previous definition (and code) again",
		Long: `Rollback deploys again an earlier definition of a function from the
catalog's history, which keeps the last ` + fmt.Sprint(catalog.HistoryDepth) + ` per function: by default the
newest one that differs from what is deployed now, or the one of
--revision (shoal rollback --list shows them). Its code is still in the code
store, so runners roll over to it as for a deploy, without dropping
requests. The rollback is a new revision; rolling back twice returns to
where you started.`,
		Example: `  shoal rollback hello
  shoal rollback hello --list
  shoal rollback hello --revision 12`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.session(cmd.Context(), func(ctx context.Context, js jetstream.JetStream) error {
				c, err := catalog.Open(ctx, js)
				if err != nil {
					return err
				}
				if list {
					hist, err := c.History(ctx, args[0])
					if err != nil {
						return err
					}
					tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
					fmt.Fprintln(tw, "REVISION\tDEPLOYED\tHANDLER\tCODE")
					for _, e := range hist {
						fmt.Fprintf(tw, "%d\t%s\t%s\t%s\n", e.Revision, e.Deployed.Local().Format(time.DateTime), e.Function.Handler, e.Function.Process.Code.Digest)
					}
					return tw.Flush()
				}
				ch, from, err := c.Rollback(ctx, args[0], revision, codeStored(ctx, js))
				if err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%-9s %s (revision %d, the definition of revision %d)\n", ch.Action, ch.Name, ch.Revision, from.Revision)
				return nil
			})
		},
	}
	a.register(cmd)
	cmd.Flags().Uint64Var(&revision, "revision", 0, "the revision to go back to (default: the newest one that differs from the deployed one)")
	cmd.Flags().BoolVar(&list, "list", false, "list the revisions the catalog keeps instead")
	return cmd
}

func newCodeCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "code",
		Short: "Inspect and clean the code store (functions' uploaded source)",
		Long: `shoal deploy uploads the source directory of each function with an http or
exec handler into the NATS object store bucket ` + bundle.Bucket + `, named by the SHA-256 of
its archive; runners fetch it by that digest. Uploads are never removed by a
deploy, so that a rollback finds its code: shoal code gc removes those no
definition in the catalog's history refers to.`,
	}
	cmd.AddCommand(newCodeListCmd(), newCodeGCCmd())
	return cmd
}

func newCodeListCmd() *cobra.Command {
	var a adminFlags
	cmd := &cobra.Command{
		Use:   "ls",
		Short: "List the stored code bundles and the functions using each",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.session(cmd.Context(), func(ctx context.Context, js jetstream.JetStream) error {
				_, infos, used, err := storedCode(ctx, js)
				if err != nil {
					return err
				}
				tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "DIGEST\tSIZE\tENTRIES\tSTORED\tUSED BY")
				for _, in := range infos {
					by := strings.Join(used[string(in.Digest)], ",")
					if by == "" {
						by = "-"
					}
					fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%s\n", in.Digest, in.Size, in.Files, in.Stored.Local().Format(time.DateTime), by)
				}
				return tw.Flush()
			})
		},
	}
	a.register(cmd)
	return cmd
}

func newCodeGCCmd() *cobra.Command {
	var (
		a      adminFlags
		dryRun bool
		minAge time.Duration
	)
	cmd := &cobra.Command{
		Use:   "gc",
		Short: "Remove the stored code no definition in the catalog's history uses",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.session(cmd.Context(), func(ctx context.Context, js jetstream.JetStream) error {
				store, infos, used, err := storedCode(ctx, js)
				if err != nil {
					return err
				}
				for _, in := range infos {
					// A deploy uploads its code before the catalog names
					// it: code younger than --min-age may be on its way.
					if len(used[string(in.Digest)]) > 0 || time.Since(in.Stored) < minAge {
						continue
					}
					if !dryRun {
						if err := store.Delete(ctx, in.Digest); err != nil {
							return err
						}
					}
					verb := "removed  "
					if dryRun {
						verb = "would remove"
					}
					fmt.Fprintf(cmd.OutOrStdout(), "%s %s (%d bytes, first uploaded for %s)\n", verb, in.Digest, in.Size, in.Function)
				}
				return nil
			})
		},
	}
	a.register(cmd)
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "only print what would be removed")
	cmd.Flags().DurationVar(&minAge, "min-age", time.Hour, "keep code uploaded more recently than this, which a deploy under way may be about to name")
	return cmd
}

// storedCode opens the code store and lists its bundles, with the
// functions whose kept definitions use each (codeInUse).
func storedCode(ctx context.Context, js jetstream.JetStream) (*bundle.Store, []bundle.Info, map[string][]string, error) {
	store, err := bundle.Open(ctx, js)
	if err != nil {
		return nil, nil, nil, err
	}
	infos, err := store.List(ctx)
	if err != nil {
		return nil, nil, nil, err
	}
	used, err := codeInUse(ctx, js)
	if err != nil {
		return nil, nil, nil, err
	}
	return store, infos, used, nil
}

// codeInUse maps each digest that a definition in the catalog (its
// history included) refers to, to the functions referring to it.
func codeInUse(ctx context.Context, js jetstream.JetStream) (map[string][]string, error) {
	c, err := catalog.Open(ctx, js)
	if errors.Is(err, catalog.ErrNoCatalog) {
		return map[string][]string{}, nil
	}
	if err != nil {
		return nil, err
	}
	names, err := c.Names(ctx)
	if err != nil {
		return nil, err
	}
	used := map[string][]string{}
	for _, name := range names {
		hist, err := c.History(ctx, name)
		if errors.Is(err, catalog.ErrNotDeployed) {
			continue
		}
		if err != nil {
			return nil, err
		}
		seen := map[string]bool{}
		for _, e := range hist {
			if d := e.Function.Process.Code.Digest; d != "" && !seen[d] {
				seen[d] = true
				used[d] = append(used[d], name)
			}
		}
	}
	return used, nil
}
