package main

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"
)

func newValidateCmd() *cobra.Command {
	var file string
	cmd := &cobra.Command{
		Use:   "validate",
		Short: "Check a function manifest and report every problem with its file:line:col",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			m, err := loadManifest(file)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: valid, %d function(s): %s\n", file, len(m.Functions), strings.Join(m.Names(), ", "))
			return nil
		},
	}
	cmd.Flags().StringVarP(&file, "file", "f", defaultManifest, "function manifest")
	return cmd
}
