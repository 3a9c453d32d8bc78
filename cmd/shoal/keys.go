package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"slices"
	"text/tabwriter"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"

	"github.com/shoal-dev/shoal/platform/broker"
	"github.com/shoal-dev/shoal/platform/keyring"
	"github.com/shoal-dev/shoal/token"
)

// ensureKeyFile reads the signing key file, creating it with a new
// Ed25519 key first if it does not exist.
func ensureKeyFile(path string) ([]jwkset.JWK, error) {
	keys, err := token.ReadKeyFile(path)
	if err == nil {
		return keys, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	k, err := token.GenerateKey(token.EdDSA)
	if err != nil {
		return nil, err
	}
	if err := token.WriteKeyFile(path, []jwkset.JWK{k}); err != nil {
		return nil, err
	}
	logger.Info("created a token signing key", "kid", k.Marshal().KID, "file", path)
	return []jwkset.JWK{k}, nil
}

// publishKeys publishes the public halves of the asymmetric keys.
func publishKeys(ctx context.Context, kv jetstream.KeyValue, keys []jwkset.JWK) error {
	for _, k := range keys {
		if k.Marshal().KTY == jwkset.KtyOct {
			continue // a shared secret is never published
		}
		if err := keyring.Publish(ctx, kv, k); err != nil {
			return err
		}
	}
	return nil
}

// adminFlags are the flags of the operator commands that act on a
// running deployment with the admin role.
type adminFlags struct {
	nats natsFlags
	data string
}

func (a *adminFlags) register(cmd *cobra.Command) {
	a.nats.register(cmd.Flags())
	cmd.Flags().StringVar(&a.data, "data", ".shoal", "data directory of shoal up, where the admin NATS credentials and the signing keys are found")
}

// session runs fn with an admin connection, within 30 seconds.
func (a *adminFlags) session(parent context.Context, fn func(ctx context.Context, js jetstream.JetStream) error) error {
	ctx, cancel := context.WithTimeout(parent, 30*time.Second)
	defer cancel()
	nc, js, err := a.connect(ctx)
	if err != nil {
		return err
	}
	defer nc.Close()
	return fn(ctx, js)
}

// keyFlags are adminFlags plus the signing key file.
type keyFlags struct {
	adminFlags
	file string
}

func (k *keyFlags) register(cmd *cobra.Command) {
	k.adminFlags.register(cmd)
	cmd.Flags().StringVar(&k.file, "key", "", "signing key file (default DATA/"+keyFileName+")")
}

// read returns the path of the key file and its keys; a missing file has
// none.
func (k *keyFlags) read() (string, []jwkset.JWK, error) {
	path := k.file
	if path == "" {
		path = keyFilePath(k.data)
	}
	keys, err := token.ReadKeyFile(path)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return "", nil, err
	}
	return path, keys, nil
}

// connect opens an admin connection: the given credentials, else shoal
// up's admin seed from the data directory.
func (a *adminFlags) connect(ctx context.Context) (*nats.Conn, jetstream.JetStream, error) {
	a.nats.defaultNKey((&broker.Credentials{Dir: credentialsPath(a.data)}).SeedFile(broker.RoleAdmin))
	nc, err := a.nats.connect("shoal-admin", nats.MaxReconnects(0))
	if err != nil {
		return nil, nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, nil, fmt.Errorf("jetstream: %w", err)
	}
	return nc, js, nil
}

func newTokenCmd() *cobra.Command {
	var (
		sub, keyFile, data, issuer, audience string
		perms                                []string
		ttl                                  time.Duration
	)
	cmd := &cobra.Command{
		Use:   "token",
		Short: "Mint an access token with the platform's signing key",
		Long: `Mint an access token for scripts and operators, signed with the newest key
of the signing key file (by default the one shoal up keeps in its data
directory). Only the token is printed, so that TOKEN=$(shoal token ...)
works.`,
		Example: `  TOKEN=$(shoal token --sub alice --perm echo --ttl 1h)
  curl -H "Authorization: Bearer $TOKEN" -d hi http://127.0.0.1:8080/function/echo`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			tok, err := mint(keyFile, data, issuer, audience, sub, perms, ttl)
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), tok)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&sub, "sub", "", "subject of the token: who it is for (required)")
	f.StringSliceVar(&perms, "perm", nil, "permissions the token holds, comma-separated")
	f.DurationVar(&ttl, "ttl", defaultTokenTTL, "lifetime of the token")
	f.StringVar(&keyFile, "key", "", "signing key file (default DATA/"+keyFileName+")")
	f.StringVar(&data, "data", ".shoal", "data directory of shoal up")
	f.StringVar(&issuer, "token-issuer", defaultIssuer, "iss of the token")
	f.StringVar(&audience, "token-audience", defaultAudience, "aud of the token")
	_ = cmd.MarkFlagRequired("sub")
	return cmd
}

// mint signs a token with the newest key of keyFile, by default the one
// in the data directory.
func mint(keyFile, data, issuer, audience, sub string, perms []string, ttl time.Duration) (string, error) {
	if keyFile == "" {
		keyFile = keyFilePath(data)
	}
	s, err := token.NewFileSigner(keyFile, issuer, audience)
	if err != nil {
		return "", fmt.Errorf("signing key: %w", err)
	}
	tok, _, err := s.Sign(sub, perms, ttl)
	return tok, err
}

func newKeyCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "key",
		Short: "Rotate, list and withdraw the token signing keys",
		Long: `Token signing keys live, private, in the signing key file (DATA/` + keyFileName + `);
their public halves are published in the NATS KV bucket ` + keyring.Bucket + `, where every
gateway and runner follows them. A rotation publishes the new public key
first, then makes it the key that signs; tokens signed with older keys keep
verifying until those keys are withdrawn with shoal key rm.`,
	}
	cmd.AddCommand(newKeyRotateCmd(), newKeyListCmd(), newKeyRemoveCmd(), newKeyPublishCmd())
	return cmd
}

func newKeyPublishCmd() *cobra.Command {
	var (
		k        keyFlags
		replicas int
	)
	cmd := &cobra.Command{
		Use:   "publish",
		Short: "Publish the public halves of the key file's signing keys",
		Long: `Publish the public halves of every asymmetric key in the signing key file
into the KV bucket ` + keyring.Bucket + `, creating it if needed, so that gateways and
runners verify the tokens those keys sign. Keys already published stay.
shoal up does this itself; a multi-machine deployment runs it once per
key file (docs/deploy.md).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if replicas < 0 || replicas > 5 {
				return fmt.Errorf("--replicas %d: want 1 to 5 (0 keeps an existing bucket's)", replicas)
			}
			path, keys, err := k.read()
			if err != nil {
				return err
			}
			if len(keys) == 0 {
				return fmt.Errorf("no signing keys in %s (shoal init creates one)", path)
			}
			err = k.session(cmd.Context(), func(ctx context.Context, js jetstream.JetStream) error {
				// Publishing again is harmless; see shoal deploy.
				return broker.Retry(ctx, jsAttempt, func(ctx context.Context) error {
					kv, err := keyring.Create(ctx, js, replicas)
					if err != nil {
						return err
					}
					return publishKeys(ctx, kv, keys)
				})
			})
			if err != nil {
				return err
			}
			for _, key := range keys {
				if m := key.Marshal(); m.KTY != jwkset.KtyOct {
					fmt.Fprintf(cmd.OutOrStdout(), "published %s (%s)\n", m.KID, m.ALG)
				}
			}
			return nil
		},
	}
	k.register(cmd)
	cmd.Flags().IntVar(&replicas, "replicas", 0, "replicas of the key bucket: 1 on one server, 3 on a cluster (0: keep an existing bucket's, 1 for a new one)")
	return cmd
}

func newKeyRotateCmd() *cobra.Command {
	var (
		k   keyFlags
		alg string
	)
	cmd := &cobra.Command{
		Use:   "rotate",
		Short: "Create a new signing key and make it the one that signs",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			path, keys, err := k.read()
			if err != nil {
				return err
			}
			key, err := token.GenerateKey(alg)
			if err != nil {
				return err
			}
			if alg != token.HS256 {
				// Publish first: verifiers must know the key before a
				// token signed with it reaches them.
				err := k.session(cmd.Context(), func(ctx context.Context, js jetstream.JetStream) error {
					kv, err := keyring.Create(ctx, js, 0)
					if err != nil {
						return err
					}
					return publishKeys(ctx, kv, []jwkset.JWK{key})
				})
				if err != nil {
					return err
				}
			}
			if err := token.WriteKeyFile(path, append(keys, key)); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "new signing key %s (%s); it signs from now on\n", key.Marshal().KID, alg)
			if alg == token.HS256 {
				fmt.Fprintln(cmd.OutOrStdout(), "HS256 is a shared secret: give gateways and runners the key file with --hs256-keys, and restart them")
			}
			return nil
		},
	}
	k.register(cmd)
	cmd.Flags().StringVar(&alg, "alg", token.EdDSA, "algorithm of the new key: EdDSA, ES256, RS256 or HS256")
	return cmd
}

func newKeyListCmd() *cobra.Command {
	var k keyFlags
	cmd := &cobra.Command{
		Use:   "ls",
		Short: "List the signing keys: in the key file and published",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, local, err := k.read()
			if err != nil {
				return err
			}
			published := map[string]bool{}
			err = k.session(cmd.Context(), func(ctx context.Context, js jetstream.JetStream) error {
				kr, err := keyring.Watch(ctx, js, nil)
				if errors.Is(err, keyring.ErrNoKeys) {
					return nil
				}
				if err != nil {
					return err
				}
				for _, kid := range kr.KeyIDs() {
					published[kid] = true
				}
				return kr.Stop()
			})
			if err != nil {
				return err
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "KID\tALG\tIN KEY FILE\tPUBLISHED\tSIGNS")
			seen := map[string]bool{}
			for i, key := range local {
				m := key.Marshal()
				seen[m.KID] = true
				fmt.Fprintf(tw, "%s\t%s\tyes\t%s\t%s\n", m.KID, m.ALG, yesNo(published[m.KID]), yesNo(i == len(local)-1))
			}
			for _, kid := range slices.Sorted(maps.Keys(published)) {
				if !seen[kid] {
					fmt.Fprintf(tw, "%s\t\tno\tyes\tno\n", kid)
				}
			}
			return tw.Flush()
		},
	}
	k.register(cmd)
	return cmd
}

func newKeyRemoveCmd() *cobra.Command {
	var k keyFlags
	cmd := &cobra.Command{
		Use:   "rm KID",
		Short: "Withdraw a signing key: tokens signed with it stop verifying",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			kid := args[0]
			path, local, err := k.read()
			if err != nil {
				return err
			}
			var keep []jwkset.JWK
			for i, key := range local {
				if key.Marshal().KID != kid {
					keep = append(keep, key)
				} else if i == len(local)-1 {
					return fmt.Errorf("key %s is the one that signs; run shoal key rotate first", kid)
				}
			}
			// Withdraw first, so that no verifier trusts the key once it
			// is gone from the file.
			removeErr := k.session(cmd.Context(), func(ctx context.Context, js jetstream.JetStream) error {
				kv, err := js.KeyValue(ctx, keyring.Bucket)
				if err != nil {
					return fmt.Errorf("open bucket %s: %w", keyring.Bucket, err)
				}
				return keyring.Remove(ctx, kv, kid)
			})
			inFile := len(keep) < len(local)
			switch {
			case !inFile && removeErr != nil:
				return removeErr
			case inFile && removeErr != nil && !errors.Is(removeErr, keyring.ErrNotPublished):
				return removeErr // not withdrawn: keep it in the file too
			case inFile:
				if err := token.WriteKeyFile(path, keep); err != nil {
					return err
				}
			}
			fmt.Fprintf(cmd.OutOrStdout(), "key %s withdrawn\n", kid)
			return nil
		},
	}
	k.register(cmd)
	return cmd
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}
