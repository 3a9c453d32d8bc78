package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/shoal-dev/shoal/functions/auth"
)

func newUserCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "user",
		Short: "Manage the users the auth function issues tokens to",
		Long: `Manage users: they live in the NATS KV bucket ` + auth.UsersBucket + `, passwords hashed
with bcrypt. The auth function (POST /function/auth/token) issues a token
holding the user's permissions.`,
	}
	cmd.AddCommand(newUserAddCmd(), newUserListCmd(), newUserRemoveCmd(), newUserPasswdCmd(), newUserPermCmd())
	return cmd
}

func newUserAddCmd() *cobra.Command {
	var (
		a             adminFlags
		perms         []string
		passwordStdin bool
	)
	cmd := &cobra.Command{
		Use:   "add NAME",
		Short: "Add a user; the password is asked for, or read from stdin",
		Example: `  shoal user add alice --perm echo,ping
  echo "$PASSWORD" | shoal user add bob --perm echo --password-stdin`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			password, err := readPassword(cmd, passwordStdin)
			if err != nil {
				return err
			}
			err = a.session(cmd.Context(), func(ctx context.Context, js jetstream.JetStream) error {
				users, err := auth.CreateUsers(ctx, js, 0)
				if err != nil {
					return err
				}
				return users.Add(ctx, name, password, perms)
			})
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "user %s added with permissions [%s]\n", name, strings.Join(perms, ","))
			return nil
		},
	}
	a.register(cmd)
	cmd.Flags().StringSliceVar(&perms, "perm", nil, "permissions the user's tokens hold, comma-separated")
	cmd.Flags().BoolVar(&passwordStdin, "password-stdin", false, "read the password from the first line of stdin")
	return cmd
}

// readPassword reads the password from stdin's first line, or asks for it
// twice on the terminal.
func readPassword(cmd *cobra.Command, fromStdin bool) (string, error) {
	in := cmd.InOrStdin()
	if fromStdin {
		line, err := bufio.NewReader(io.LimitReader(in, 1024)).ReadString('\n')
		if err != nil && !errors.Is(err, io.EOF) {
			return "", fmt.Errorf("read the password from stdin: %w", err)
		}
		return strings.TrimRight(line, "\r\n"), nil
	}
	f, ok := in.(*os.File)
	if !ok || !term.IsTerminal(int(f.Fd())) {
		return "", errors.New("stdin is not a terminal: pass the password on stdin with --password-stdin")
	}
	ask := func(prompt string) (string, error) {
		fmt.Fprint(cmd.ErrOrStderr(), prompt)
		b, err := term.ReadPassword(int(f.Fd()))
		fmt.Fprintln(cmd.ErrOrStderr())
		if err != nil {
			return "", fmt.Errorf("read the password: %w", err)
		}
		return string(b), nil
	}
	p1, err := ask("Password: ")
	if err != nil {
		return "", err
	}
	p2, err := ask("Again: ")
	if err != nil {
		return "", err
	}
	if p1 != p2 {
		return "", errors.New("the passwords differ")
	}
	return p1, nil
}

func newUserListCmd() *cobra.Command {
	var a adminFlags
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List the users and their permissions",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var list []auth.User
			err := a.session(cmd.Context(), func(ctx context.Context, js jetstream.JetStream) error {
				users, err := auth.OpenUsers(ctx, js)
				if errors.Is(err, auth.ErrNoUserStore) {
					return nil
				}
				if err != nil {
					return err
				}
				list, err = users.List(ctx)
				return err
			})
			if err != nil {
				return err
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tPERMISSIONS\tCREATED")
			for _, u := range list {
				fmt.Fprintf(tw, "%s\t%s\t%s\n", u.Name, strings.Join(u.Permissions, ","), u.Created.UTC().Format(time.RFC3339))
			}
			return tw.Flush()
		},
	}
	a.register(cmd)
	return cmd
}

func newUserRemoveCmd() *cobra.Command {
	var a adminFlags
	cmd := &cobra.Command{
		Use:   "rm NAME",
		Short: "Remove a user; tokens already issued stay valid until they expire",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := userChange(cmd, &a, func(ctx context.Context, users *auth.Users) error {
				return users.Remove(ctx, args[0])
			}); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "user %s removed\n", args[0])
			return nil
		},
	}
	a.register(cmd)
	return cmd
}

// userChange runs change on the user store of a running deployment.
func userChange(cmd *cobra.Command, a *adminFlags, change func(ctx context.Context, users *auth.Users) error) error {
	return a.session(cmd.Context(), func(ctx context.Context, js jetstream.JetStream) error {
		users, err := auth.OpenUsers(ctx, js)
		if err != nil {
			return err
		}
		return change(ctx, users)
	})
}

func newUserPasswdCmd() *cobra.Command {
	var (
		a             adminFlags
		passwordStdin bool
	)
	cmd := &cobra.Command{
		Use:   "passwd NAME",
		Short: "Set a user's password; tokens already issued stay valid until they expire",
		Example: `  shoal user passwd alice
  echo "$PASSWORD" | shoal user passwd alice --password-stdin`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			password, err := readPassword(cmd, passwordStdin)
			if err != nil {
				return err
			}
			if err := userChange(cmd, &a, func(ctx context.Context, users *auth.Users) error {
				return users.SetPassword(ctx, args[0], password)
			}); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "password of user %s changed\n", args[0])
			return nil
		},
	}
	a.register(cmd)
	cmd.Flags().BoolVar(&passwordStdin, "password-stdin", false, "read the password from the first line of stdin")
	return cmd
}

func newUserPermCmd() *cobra.Command {
	var (
		a     adminFlags
		perms []string
	)
	cmd := &cobra.Command{
		Use:   "perm NAME --perm a,b",
		Short: "Replace a user's permissions; they apply to the tokens issued from then on",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := userChange(cmd, &a, func(ctx context.Context, users *auth.Users) error {
				return users.SetPermissions(ctx, args[0], perms)
			}); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "user %s now has permissions [%s]\n", args[0], strings.Join(perms, ","))
			return nil
		},
	}
	a.register(cmd)
	cmd.Flags().StringSliceVar(&perms, "perm", nil, "the permissions the user's tokens hold from now on, comma-separated (none: no permission)")
	return cmd
}
