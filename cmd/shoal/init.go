package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/shoal-dev/shoal/platform/broker"
)

func newInitCmd() *cobra.Command {
	var data string
	cmd := &cobra.Command{
		Use:   "init",
		Short: "Create the NATS role credentials and the token signing key",
		Long: `Create what a deployment's secrets are made of, in the data directory:
DATA/` + credentialsDir + `/ROLE.nk, one NATS NKey seed per role (admin, gateway,
runner, auth, client), and DATA/` + keyFileName + `, the token signing key set
(Ed25519). Existing files are kept. shoal up does this itself on its first
start; run init to prepare the Secrets of a multi-machine deployment
(docs/deploy.md).`,
		Example: `  shoal init --data ./secrets
  kubectl -n shoal create secret generic shoal-gateway-credentials --from-file=./secrets/credentials/gateway.nk`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			creds, err := broker.EnsureCredentials(credentialsPath(data))
			if err != nil {
				return err
			}
			keyFile := keyFilePath(data)
			keys, err := ensureKeyFile(keyFile)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			for _, role := range broker.Roles {
				fmt.Fprintf(out, "nats credentials  %-7s %s\n", role, creds.SeedFile(role))
			}
			fmt.Fprintf(out, "signing key       %s (newest kid %s)\n", keyFile, keys[len(keys)-1].Marshal().KID)
			return nil
		},
	}
	cmd.Flags().StringVar(&data, "data", ".shoal", "directory to write into")
	return cmd
}
