package broker_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/shoal-dev/shoal/platform/broker"
)

func TestLoadCredentials(t *testing.T) {
	// One set of identities, as shoal up creates them.
	seeds, err := broker.EnsureCredentials(filepath.Join(t.TempDir(), "seeds"))
	if err != nil {
		t.Fatal(err)
	}
	other, err := broker.EnsureCredentials(filepath.Join(t.TempDir(), "other"))
	if err != nil {
		t.Fatal(err)
	}
	seed := func(role broker.Role) string {
		b, err := os.ReadFile(seeds.SeedFile(role))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	// files maps file names to contents.
	type files map[string]string
	all := func(ext string, content func(broker.Role) string) files {
		f := files{}
		for _, role := range broker.Roles {
			f[string(role)+ext] = content(role)
		}
		return f
	}
	pub := func(role broker.Role) string { return seeds.Public[role] + "\n" }
	without := func(f files, name string) files { delete(f, name); return f }
	with := func(f files, name, content string) files { f[name] = content; return f }

	tests := []struct {
		name    string
		files   files
		wantErr string // "" for success, then the keys must be seeds'
	}{
		{"seeds", all(".nk", seed), ""},
		{"public keys only", all(".pub", pub), ""},
		{"public key without newline", all(".pub", func(r broker.Role) string { return seeds.Public[r] }), ""},
		{"mixed", with(without(all(".nk", seed), "runner.nk"), "runner.pub", pub(broker.RoleRunner)), ""},
		{"seed and matching public key", with(all(".nk", seed), "admin.pub", pub(broker.RoleAdmin)), ""},
		{"missing role", without(all(".pub", pub), "client.pub"), "role client: neither"},
		{"no files", files{}, "role admin: neither"},
		{"malformed public key", with(all(".pub", pub), "gateway.pub", "not a key\n"), "gateway.pub is not a public NKey user key"},
		{"two lines", with(all(".pub", pub), "gateway.pub", pub(broker.RoleGateway)+pub(broker.RoleAdmin)), "gateway.pub is not a public NKey user key"},
		{"seed in the public-key file", with(all(".pub", pub), "auth.pub", seed(broker.RoleAuth)), "auth.pub is not a public NKey user key"},
		{"account key, not a user key", with(all(".pub", pub), "auth.pub", "A"+seeds.Public[broker.RoleAuth][1:]), "auth.pub is not a public NKey user key"},
		{"malformed seed", with(all(".nk", seed), "runner.nk", "SUnotaseed\n"), "runner.nk is not an NKey user seed"},
		{"seed and another public key", with(all(".nk", seed), "admin.pub", other.Public[broker.RoleAdmin]), "hold different identities"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			for name, content := range tt.files {
				if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			before, _ := os.ReadDir(dir)
			c, err := broker.LoadCredentials(dir)
			if after, _ := os.ReadDir(dir); len(after) != len(before) {
				t.Errorf("LoadCredentials changed the directory: %d files, then %d", len(before), len(after))
			}
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want it to say %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			for _, role := range broker.Roles {
				if c.Public[role] != seeds.Public[role] {
					t.Errorf("role %s: public key %s, want %s", role, c.Public[role], seeds.Public[role])
				}
			}
			if len(c.Users()) != len(broker.Roles) {
				t.Errorf("%d users, want %d", len(c.Users()), len(broker.Roles))
			}
		})
	}
}

func TestLoadCredentialsMissingDirectory(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "absent")
	if _, err := broker.LoadCredentials(dir); err == nil || !strings.Contains(err.Error(), "neither") {
		t.Fatalf("err = %v, want a missing-file error", err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("LoadCredentials created %s", dir)
	}
}
