package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/shoal-dev/shoal/platform/secrets"
)

func newSecretCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "secret",
		Short: "Manage the secrets functions reference by name in fn.yaml",
		Long: `Manage secrets: values kept in the NATS KV bucket ` + secrets.Bucket + `, which only
the admin and the runners may read. A function refers to one by name in
fn.yaml (secrets: {DB_PASSWORD: db-password}) and gets its value in that
environment variable; the value never appears in fn.yaml, the catalog,
shoal list or a log. A function whose secret is not set is not served
(shoal list says why) until it is.`,
	}
	cmd.AddCommand(newSecretSetCmd(), newSecretListCmd(), newSecretRemoveCmd())
	return cmd
}

func newSecretSetCmd() *cobra.Command {
	var (
		a    adminFlags
		file string
	)
	cmd := &cobra.Command{
		Use:   "set NAME",
		Short: "Set a secret's value, read from stdin (or --from-file)",
		Example: `  printf %s "$DB_PASSWORD" | shoal secret set db-password
  shoal secret set tls-key --from-file key.pem`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			in := cmd.InOrStdin()
			what := "stdin"
			if file != "" {
				f, err := os.Open(file)
				if err != nil {
					return fmt.Errorf("secret: %w", err)
				}
				defer f.Close()
				in, what = f, file
			} else if f, ok := in.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
				return errors.New("secret: pipe the value on stdin (printf %s \"$VALUE\" | shoal secret set NAME) or give --from-file")
			}
			value, err := io.ReadAll(io.LimitReader(in, secrets.MaxValue+1))
			if err != nil {
				return fmt.Errorf("secret: read the value from %s: %w", what, err)
			}
			if len(value) == 0 {
				return fmt.Errorf("secret: the value read from %s is empty", what)
			}
			return a.session(cmd.Context(), func(ctx context.Context, js jetstream.JetStream) error {
				store, err := secrets.Create(ctx, js, 0)
				if err != nil {
					return err
				}
				if err := store.Set(ctx, args[0], value); err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "set %s (%d bytes); runners starting a function that uses it from now on read the new value, running processes keep theirs until the function is redeployed\n", args[0], len(value))
				return nil
			})
		},
	}
	a.register(cmd)
	cmd.Flags().StringVar(&file, "from-file", "", "read the value from this file instead of stdin")
	return cmd
}

func newSecretListCmd() *cobra.Command {
	var a adminFlags
	cmd := &cobra.Command{
		Use:   "ls",
		Short: "List the names of the secrets that are set (never their values)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.session(cmd.Context(), func(ctx context.Context, js jetstream.JetStream) error {
				store, err := secrets.Open(ctx, js)
				if err != nil {
					return err
				}
				names, err := store.Names(ctx)
				if err != nil {
					return err
				}
				if len(names) > 0 {
					fmt.Fprintln(cmd.OutOrStdout(), strings.Join(names, "\n"))
				}
				return nil
			})
		},
	}
	a.register(cmd)
	return cmd
}

func newSecretRemoveCmd() *cobra.Command {
	var a adminFlags
	cmd := &cobra.Command{
		Use:   "rm NAME...",
		Short: "Remove secrets",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.session(cmd.Context(), func(ctx context.Context, js jetstream.JetStream) error {
				store, err := secrets.Open(ctx, js)
				if err != nil {
					return err
				}
				var errs []error
				for _, name := range args {
					if err := store.Delete(ctx, name); err != nil {
						errs = append(errs, err)
						continue
					}
					fmt.Fprintf(cmd.OutOrStdout(), "removed %s\n", name)
				}
				return errors.Join(errs...)
			})
		},
	}
	a.register(cmd)
	return cmd
}
