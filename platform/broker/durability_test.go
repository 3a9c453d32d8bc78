package broker_test

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/platform/broker"
)

func TestParseSyncPolicy(t *testing.T) {
	tests := []struct {
		in      string
		want    time.Duration
		wantErr bool
	}{
		{"always", 0, false},
		{" always ", 0, false},
		{"2m", 2 * time.Minute, false},
		{"1s", time.Second, false},
		{"1h30m", 90 * time.Minute, false},
		{"500ms", 0, true}, // below 1s: too close to always to mean lazy
		{"0", 0, true},
		{"0s", 0, true},
		{"-1m", 0, true},
		{"never", 0, true},
		{"Always", 0, true},
		{"", 0, true},
		{"120", 0, true}, // a duration needs a unit
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := broker.ParseSyncPolicy(tt.in)
			if tt.wantErr {
				if err == nil || !strings.Contains(err.Error(), "want always") {
					t.Fatalf("ParseSyncPolicy(%q) = %v, %v; want an error that says what is accepted", tt.in, got, err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ParseSyncPolicy(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
			}
		})
	}
}

// TestSyncPolicyReachesJetStream reads the running server's JetStream
// configuration from its monitoring endpoint (/varz): LazySync 0 must
// turn sync_always on, a positive LazySync must set the interval instead.
func TestSyncPolicyReachesJetStream(t *testing.T) {
	tests := []struct {
		name         string
		lazy         time.Duration
		wantAlways   bool
		wantInterval time.Duration
	}{
		{"default syncs every write", 0, true, 0},
		{"lazy", 90 * time.Second, false, 90 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := broker.Start(broker.Config{Addr: "127.0.0.1:0", MonitorAddr: "127.0.0.1:0", DataDir: t.TempDir(), LazySync: tt.lazy})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Shutdown()
			if !strings.HasPrefix(s.MonitorURL(), "http://127.0.0.1:") {
				t.Fatalf("MonitorURL = %q", s.MonitorURL())
			}
			resp, err := http.Get(s.MonitorURL() + "/varz")
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var varz struct {
				JetStream struct {
					Config struct {
						SyncAlways   bool          `json:"sync_always"`
						SyncInterval time.Duration `json:"sync_interval"`
					} `json:"config"`
				} `json:"jetstream"`
			}
			if err := json.NewDecoder(resp.Body).Decode(&varz); err != nil {
				t.Fatal(err)
			}
			c := varz.JetStream.Config
			if c.SyncAlways != tt.wantAlways {
				t.Errorf("sync_always = %v, want %v", c.SyncAlways, tt.wantAlways)
			}
			if tt.wantInterval != 0 && c.SyncInterval != tt.wantInterval {
				t.Errorf("sync_interval = %s, want %s", c.SyncInterval, tt.wantInterval)
			}
		})
	}
}

func TestMonitorOff(t *testing.T) {
	s, err := broker.Start(broker.Config{Addr: "127.0.0.1:0", DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown()
	if s.MonitorURL() != "" || s.ClusterAddr() != nil {
		t.Errorf("MonitorURL = %q, ClusterAddr = %v; want both off", s.MonitorURL(), s.ClusterAddr())
	}
	s.Shutdown() // a second Shutdown does nothing
}
