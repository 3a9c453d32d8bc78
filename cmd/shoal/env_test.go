package main

import (
	"strings"
	"testing"
)

// TestEnvFlags: SHOAL_<FLAG> sets the flags of the commands that run in
// containers, never a hidden flag, never over the command line, and not
// at all for commands whose flag names mean something else (up, invoke).
func TestEnvFlags(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		env     map[string]string
		flag    string
		want    string
		wantErr string
	}{
		{"sets a flag", []string{"runner"}, map[string]string{"SHOAL_NATS_NKEY": "/run/runner.nk"}, "nats-nkey", "/run/runner.nk", ""},
		{"the command line wins", []string{"runner", "--nats-nkey", "/cli.nk"}, map[string]string{"SHOAL_NATS_NKEY": "/env.nk"}, "nats-nkey", "/cli.nk", ""},
		{"a global flag", []string{"gateway"}, map[string]string{"SHOAL_LOG_FORMAT": "json"}, "log-format", "json", ""},
		{"a subcommand of an opted-in group", []string{"key", "publish"}, map[string]string{"SHOAL_REPLICAS": "3"}, "replicas", "3", ""},
		{"never a hidden flag", []string{"runner"}, map[string]string{"SHOAL_WORKER": "7"}, "worker", "0", ""},
		{"not a runner's --file, meant for deploy", []string{"runner"}, map[string]string{"SHOAL_FILE": "fn.yaml"}, "file", "", ""},
		{"not a gateway's --file", []string{"gateway"}, map[string]string{"SHOAL_FILE": "fn.yaml"}, "file", "", ""},
		{"not a runner's --key, meant for key publish", []string{"runner"}, map[string]string{"SHOAL_KEY": "signing.jwks"}, "key", "", ""},
		{"deploy's --file", []string{"deploy"}, map[string]string{"SHOAL_FILE": "site.yaml"}, "file", "site.yaml", ""},
		{"not for up, whose --nats listens", []string{"up"}, map[string]string{"SHOAL_NATS": "nats://elsewhere:4222"}, "nats", "127.0.0.1:4222", ""},
		{"not for invoke, whose --data is a body", []string{"invoke", "echo"}, map[string]string{"SHOAL_DATA": "./site"}, "data", "", ""},
		{"not invoke's --async, meant for runners", []string{"invoke", "echo"}, map[string]string{"SHOAL_ASYNC": "true"}, "async", "false", ""},
		{"calls' --data, as rm's", []string{"calls", "dlq"}, map[string]string{"SHOAL_DATA": "/srv/shoal"}, "data", "/srv/shoal", ""},
		{"a bad value names the variable and the flag", []string{"gateway"}, map[string]string{"SHOAL_DRAIN_TIMEOUT": "soon"}, "drain-timeout", "", "SHOAL_DRAIN_TIMEOUT=\"soon\" (--drain-timeout)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			cmd, rest, err := newRootCmd().Find(tt.args)
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.ParseFlags(rest); err != nil {
				t.Fatal(err)
			}
			err = applyEnv(cmd)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("applyEnv = %v, want an error with %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := cmd.Flags().Lookup(tt.flag).Value.String(); got != tt.want {
				t.Errorf("--%s = %q, want %q", tt.flag, got, tt.want)
			}
		})
	}
}
