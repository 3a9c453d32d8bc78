package main

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/shoal-dev/shoal/platform/broker"
)

// TestNATS runs `shoal nats` as a real process given only the roles'
// public keys: the admin connects with its seed and writes a KV bucket,
// the monitoring endpoint answers the health probes, and SIGTERM ends it
// through lame-duck mode with exit status 0.
func TestNATS(t *testing.T) {
	seeds, err := broker.EnsureCredentials(filepath.Join(t.TempDir(), "seeds"))
	if err != nil {
		t.Fatal(err)
	}
	pubs := t.TempDir()
	for _, role := range broker.Roles {
		if err := os.WriteFile(broker.PublicKeyFile(pubs, role), []byte(seeds.Public[role]+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	data := t.TempDir()
	p := startShoal(t, "--log-format", "json", "nats", "--listen", "127.0.0.1:0", "--monitor", "127.0.0.1:0",
		"--credentials", pubs, "--data", data, "--name", "n1", "--drain-timeout", "5s")
	var listening struct {
		URL, Cluster, Monitor, Name, JetStream, Sync string
	}
	line := p.waitLog(`^\{.*"msg":"nats listening".*\}$`)[0]
	if err := json.Unmarshal([]byte(line), &listening); err != nil {
		t.Fatalf("log line %s: %v", line, err)
	}
	if listening.Name != "n1" || listening.Cluster != "" || listening.Sync != "always" ||
		listening.JetStream != filepath.Join(data, "jetstream") || !strings.HasPrefix(listening.Monitor, "http://127.0.0.1:") {
		t.Errorf("listening line = %s", line)
	}

	// A stranger is refused; the admin may use JetStream.
	if nc, err := nats.Connect(listening.URL); err == nil {
		nc.Close()
		t.Error("a connection without credentials was accepted")
	}
	lameDuck := make(chan struct{}, 1)
	admin := connectAs(t, listening.URL, seeds.SeedFile(broker.RoleAdmin))
	nc, err := nats.Connect(listening.URL, nats.NoReconnect(), mustNkey(t, seeds.SeedFile(broker.RoleAdmin)),
		nats.LameDuckModeHandler(func(*nats.Conn) { lameDuck <- struct{}{} }))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(admin)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "nats_cmd", Storage: jetstream.FileStorage})
	if err != nil {
		t.Fatalf("create bucket: %v", err)
	}
	if _, err := kv.Put(ctx, "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	if e, err := kv.Get(ctx, "k"); err != nil || string(e.Value()) != "v" {
		t.Fatalf("get = %v, %v", e, err)
	}

	for _, path := range []string{"/healthz", "/healthz?js-enabled-only=true", "/healthz?js-server-only=true"} {
		if code, body := get(t, listening.Monitor+path); code != http.StatusOK {
			t.Errorf("GET %s = %d %s, want 200", path, code, body)
		}
	}

	if err := p.stop(syscall.SIGTERM); err != nil {
		t.Fatalf("exit after SIGTERM: %v, want status 0", err)
	}
	select {
	case <-lameDuck:
	default:
		t.Error("the client was not told the server entered lame-duck mode")
	}
	if !strings.Contains(p.output(), `"msg":"nats stopped"`) {
		t.Error(`no "nats stopped" log line`)
	}
}

func mustNkey(t *testing.T, seed string) nats.Option {
	t.Helper()
	opt, err := nats.NkeyOptionFromSeed(seed)
	if err != nil {
		t.Fatal(err)
	}
	return opt
}

// TestNATSErrors: `shoal nats` refuses to start without what a production
// server needs, and says which flag is wrong.
func TestNATSErrors(t *testing.T) {
	creds, err := broker.EnsureCredentials(filepath.Join(t.TempDir(), "creds"))
	if err != nil {
		t.Fatal(err)
	}
	partial := t.TempDir()
	if err := os.WriteFile(broker.PublicKeyFile(partial, broker.RoleAdmin), []byte(creds.Public[broker.RoleAdmin]), 0o644); err != nil {
		t.Fatal(err)
	}
	base := []string{"nats", "--listen", "127.0.0.1:0", "--data", t.TempDir()}
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no credentials", nil, `"credentials" not set`},
		{"a role missing", []string{"--credentials", partial}, "role gateway: neither"},
		{"bad sync", []string{"--credentials", creds.Dir, "--sync", "sometimes"}, `invalid argument "sometimes" for "--sync"`},
		{"sync too frequent", []string{"--credentials", creds.Dir, "--sync", "10ms"}, "at least 1s"},
		{"payload too large", []string{"--credentials", creds.Dir, "--max-payload", "65MiB"}, "--max-payload 65MiB: at most 64MiB"},
		{"cluster without routes", []string{"--credentials", creds.Dir, "--cluster-listen", "127.0.0.1:0"}, "needs routes"},
		{"bad route", []string{"--credentials", creds.Dir, "--cluster-listen", "127.0.0.1:0", "--routes", "nats-0:6222"}, "want nats-route://host:port"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, stderr, code := runShoal(t, t.TempDir(), append(append([]string{}, base...), tt.args...)...)
			if code == 0 || !strings.Contains(stderr, tt.want) {
				t.Errorf("exit %d, stderr %q; want an error saying %q", code, stderr, tt.want)
			}
		})
	}
}
