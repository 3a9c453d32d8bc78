package auth_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/crypto/bcrypt"

	"github.com/shoal-dev/shoal/functions/auth"
	"github.com/shoal-dev/shoal/platform/broker"
	"github.com/shoal-dev/shoal/platform/broker/brokertest"
)

// startJS starts an embedded NATS server and returns a JetStream context
// on a new connection to it.
func startJS(t *testing.T) (*broker.Server, jetstream.JetStream) {
	t.Helper()
	s := brokertest.Start(t)
	return s, connectJS(t, s)
}

func connectJS(t *testing.T, s *broker.Server) jetstream.JetStream {
	t.Helper()
	js, err := jetstream.New(brokertest.Connect(t, s))
	if err != nil {
		t.Fatal(err)
	}
	return js
}

func testContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// newUsers creates the user store with cheap hashes.
func newUsers(t *testing.T, js jetstream.JetStream) *auth.Users {
	t.Helper()
	users, err := auth.CreateUsers(testContext(t), js, 1)
	if err != nil {
		t.Fatal(err)
	}
	users.Cost = bcrypt.MinCost
	return users
}

func TestUsersAddGetListRemove(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	_, js := startJS(t)
	users := newUsers(t, js)

	list, err := users.List(ctx)
	if err != nil || list == nil || len(list) != 0 {
		t.Fatalf("List of an empty store = %v, %v; want an empty slice", list, err)
	}

	before := time.Now()
	if err := users.Add(ctx, "bob", "bob's password", nil); err != nil {
		t.Fatal(err)
	}
	if err := users.Add(ctx, "alice", "correct horse", []string{"echo", "fn:admin/read"}); err != nil {
		t.Fatal(err)
	}

	alice, err := users.Get(ctx, "alice")
	if err != nil {
		t.Fatal(err)
	}
	if alice.Name != "alice" || !slices.Equal(alice.Permissions, []string{"echo", "fn:admin/read"}) {
		t.Errorf("Get(alice) = %+v", alice)
	}
	if alice.Created.Before(before.Add(-time.Second)) || alice.Created.After(time.Now()) {
		t.Errorf("Created = %v, want about %v", alice.Created, before)
	}
	if err := bcrypt.CompareHashAndPassword(alice.PasswordHash, []byte("correct horse")); err != nil {
		t.Errorf("stored hash does not match the password: %v", err)
	}
	if cost, _ := bcrypt.Cost(alice.PasswordHash); cost != bcrypt.MinCost {
		t.Errorf("hash cost = %d, want Users.Cost %d", cost, bcrypt.MinCost)
	}

	list, err = users.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, u := range list {
		names = append(names, u.Name)
	}
	if !slices.Equal(names, []string{"alice", "bob"}) {
		t.Errorf("List names = %v, want [alice bob] (sorted)", names)
	}
	if bob := list[1]; bob.Permissions == nil || len(bob.Permissions) != 0 {
		t.Errorf("bob's permissions = %#v, want an empty list", bob.Permissions)
	}

	if err := users.Add(ctx, "alice", "another password", nil); !errors.Is(err, auth.ErrUserExists) {
		t.Errorf("Add of a taken name: %v, want ErrUserExists", err)
	}

	if err := users.Remove(ctx, "bob"); err != nil {
		t.Fatal(err)
	}
	if _, err := users.Get(ctx, "bob"); !errors.Is(err, auth.ErrNoSuchUser) {
		t.Errorf("Get of a removed user: %v, want ErrNoSuchUser", err)
	}
	if err := users.Remove(ctx, "bob"); !errors.Is(err, auth.ErrNoSuchUser) {
		t.Errorf("Remove of a missing user: %v, want ErrNoSuchUser", err)
	}
	if list, _ := users.List(ctx); len(list) != 1 || list[0].Name != "alice" {
		t.Errorf("List after removing bob = %+v, want alice only", list)
	}
	if err := users.Add(ctx, "bob", "bob's new password", nil); err != nil {
		t.Errorf("Add of a removed name: %v", err)
	}
}

func TestUsersSetPasswordAndPermissions(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	_, js := startJS(t)
	users := newUsers(t, js)
	if err := users.Add(ctx, "alice", "correct horse", []string{"echo"}); err != nil {
		t.Fatal(err)
	}

	if err := users.SetPassword(ctx, "alice", "battery staple"); err != nil {
		t.Fatal(err)
	}
	if _, err := users.Authenticate(ctx, "alice", "correct horse"); !errors.Is(err, auth.ErrBadCredentials) {
		t.Errorf("old password after SetPassword: %v, want ErrBadCredentials", err)
	}
	if _, err := users.Authenticate(ctx, "alice", "battery staple"); err != nil {
		t.Errorf("new password after SetPassword: %v", err)
	}

	if err := users.SetPermissions(ctx, "alice", []string{"ping", "echo"}); err != nil {
		t.Fatal(err)
	}
	if u, _ := users.Get(ctx, "alice"); u == nil || !slices.Equal(u.Permissions, []string{"ping", "echo"}) {
		t.Errorf("permissions after SetPermissions = %+v", u)
	}

	if err := users.SetPassword(ctx, "nobody", "long enough"); !errors.Is(err, auth.ErrNoSuchUser) {
		t.Errorf("SetPassword of a missing user: %v, want ErrNoSuchUser", err)
	}
	if err := users.SetPermissions(ctx, "alice", []string{"a b"}); !errors.Is(err, auth.ErrInvalidPermission) {
		t.Errorf("SetPermissions with an invalid permission: %v, want ErrInvalidPermission", err)
	}
	if err := users.SetPassword(ctx, "alice", "short"); !errors.Is(err, auth.ErrInvalidPassword) {
		t.Errorf("SetPassword with a short password: %v, want ErrInvalidPassword", err)
	}
}

func TestValidUsername(t *testing.T) {
	t.Parallel()
	for _, name := range []string{"a", "7", "alice", "Alice.Smith", "a_b-c.d", "a-", "a_", strings.Repeat("x", 64)} {
		if err := auth.ValidUsername(name); err != nil {
			t.Errorf("ValidUsername(%q) = %v, want nil", name, err)
		}
	}
}

func TestUsersAddRejectsInvalidInput(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	_, js := startJS(t)
	users := newUsers(t, js)
	const password = "correct horse"
	for _, tc := range []struct {
		name     string
		user     string
		password string
		perms    []string
		want     error
		message  string // part of the error's text
	}{
		{"empty name", "", password, nil, auth.ErrInvalidUsername, "1 to 64 characters"},
		{"name over 64 bytes", strings.Repeat("x", 65), password, nil, auth.ErrInvalidUsername, "1 to 64 characters"},
		{"name starting with a dot", ".alice", password, nil, auth.ErrInvalidUsername, "starting with a letter or digit"},
		{"name starting with a dash", "-alice", password, nil, auth.ErrInvalidUsername, "starting with a letter or digit"},
		{"name with a space", "al ice", password, nil, auth.ErrInvalidUsername, "letters, digits and . _ -"},
		{"name with a NATS wildcard", "al*", password, nil, auth.ErrInvalidUsername, "letters, digits and . _ -"},
		{"name with a slash", "a/b", password, nil, auth.ErrInvalidUsername, "letters, digits and . _ -"},
		{"non-ASCII name", "ålice", password, nil, auth.ErrInvalidUsername, "letters, digits and . _ -"},
		{"name ending with a dot", "alice.", password, nil, auth.ErrInvalidUsername, "cannot end with a dot"},
		{"name with two dots in a row", "al..ice", password, nil, auth.ErrInvalidUsername, "two dots in a row"},
		{"password under 8 bytes", "alice", "1234567", nil, auth.ErrInvalidPassword, "8 to 72 bytes"},
		{"password over 72 bytes", "alice", strings.Repeat("p", 73), nil, auth.ErrInvalidPassword, "8 to 72 bytes"},
		{"empty permission", "alice", password, []string{""}, auth.ErrInvalidPermission, "1 to 128"},
		{"permission with a space", "alice", password, []string{"a b"}, auth.ErrInvalidPermission, "letters, digits and . _ : / -"},
		{"permission with a comma", "alice", password, []string{"a,b"}, auth.ErrInvalidPermission, "letters, digits and . _ : / -"},
		{"permission over 128 bytes", "alice", password, []string{strings.Repeat("p", 129)}, auth.ErrInvalidPermission, "1 to 128"},
		{"duplicate permission", "alice", password, []string{"echo", "ping", "echo"}, auth.ErrInvalidPermission, `"echo" is listed twice`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := users.Add(ctx, tc.user, tc.password, tc.perms)
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.message) {
				t.Errorf("Add(%.20q) = %v, want %v saying %q", tc.user, err, tc.want, tc.message)
			}
		})
	}
	if list, _ := users.List(ctx); len(list) != 0 {
		t.Errorf("rejected users were stored: %+v", list)
	}
	// The bounds themselves are allowed.
	if err := users.Add(ctx, strings.Repeat("x", 64), strings.Repeat("p", 72), []string{strings.Repeat("p", 128)}); err != nil {
		t.Errorf("Add at the bounds: %v", err)
	}
	if err := users.Add(ctx, "bob", "12345678", []string{"fn:a/b-c_d.e"}); err != nil {
		t.Errorf("Add at the lower bounds: %v", err)
	}
}

func TestUsersAuthenticate(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	_, js := startJS(t)
	users := newUsers(t, js)
	compares := auth.CountCompares(users)
	long := strings.Repeat("p", 72)
	if err := users.Add(ctx, "alice", "correct horse", []string{"echo"}); err != nil {
		t.Fatal(err)
	}
	if err := users.Add(ctx, "bob", long, nil); err != nil {
		t.Fatal(err)
	}

	u, err := users.Authenticate(ctx, "alice", "correct horse")
	if err != nil || u.Name != "alice" || !slices.Equal(u.Permissions, []string{"echo"}) {
		t.Fatalf("Authenticate(alice, right password) = %+v, %v", u, err)
	}
	if _, err := users.Authenticate(ctx, "bob", long); err != nil {
		t.Errorf("Authenticate with a 72-byte password: %v", err)
	}
	for _, tc := range []struct{ name, user, password string }{
		{"wrong password", "alice", "wrong horse"},
		{"unknown user", "carol", "correct horse"},
		{"name that cannot be a username", "not a user!", "correct horse"},
		{"another user's password", "bob", "correct horse"},
		{"empty password", "alice", ""},
		// bcrypt reads 72 bytes; a longer password that starts with the
		// right one must not pass for it.
		{"right password with more after 72 bytes", "bob", long + "extra"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := compares.Load()
			u, err := users.Authenticate(ctx, tc.user, tc.password)
			if !errors.Is(err, auth.ErrBadCredentials) || u != nil {
				t.Errorf("Authenticate = %+v, %v; want ErrBadCredentials", u, err)
			}
			if got := compares.Load() - n; got != 1 {
				t.Errorf("bcrypt comparisons = %d, want 1 whatever was wrong", got)
			}
		})
	}
}

func TestUsersDummyHashHasTheCost(t *testing.T) {
	t.Parallel()
	_, js := startJS(t)
	users := newUsers(t, js)
	if cost, err := bcrypt.Cost(auth.DummyHash(users)); err != nil || cost != bcrypt.MinCost {
		t.Errorf("dummy hash cost = %d, %v; want %d", cost, err, bcrypt.MinCost)
	}
}

// The one test at bcrypt's default cost: Users without a Cost use it.
func TestUsersDefaultCost(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	_, js := startJS(t)
	users, err := auth.CreateUsers(ctx, js, 1)
	if err != nil {
		t.Fatal(err)
	}
	if err := users.Add(ctx, "alice", "correct horse", nil); err != nil {
		t.Fatal(err)
	}
	u, err := users.Get(ctx, "alice")
	if err != nil {
		t.Fatal(err)
	}
	if cost, _ := bcrypt.Cost(u.PasswordHash); cost != bcrypt.DefaultCost {
		t.Errorf("hash cost = %d, want bcrypt.DefaultCost %d", cost, bcrypt.DefaultCost)
	}
}

func TestUsersStoreNoPlaintextPassword(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	_, js := startJS(t)
	users := newUsers(t, js)
	const password = "correct horse battery"
	if err := users.Add(ctx, "alice", password, []string{"echo"}); err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(ctx, auth.UsersBucket)
	if err != nil {
		t.Fatal(err)
	}
	e, err := kv.Get(ctx, "alice")
	if err != nil {
		t.Fatal(err)
	}
	raw := string(e.Value())
	for _, secret := range []string{password, base64.StdEncoding.EncodeToString([]byte(password))} {
		if strings.Contains(raw, secret) {
			t.Errorf("stored value %s holds the password (%q)", raw, secret)
		}
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(e.Value(), &fields); err != nil {
		t.Fatal(err)
	}
	if got := slices.Sorted(maps.Keys(fields)); !slices.Equal(got, []string{"created", "name", "password_hash", "permissions"}) {
		t.Errorf("stored fields = %v", got)
	}
}

func TestOpenUsersWithoutBucket(t *testing.T) {
	t.Parallel()
	_, js := startJS(t)
	_, err := auth.OpenUsers(testContext(t), js)
	if !errors.Is(err, auth.ErrNoUserStore) || !errors.Is(err, jetstream.ErrBucketNotFound) {
		t.Errorf("OpenUsers without a bucket: %v, want ErrNoUserStore and ErrBucketNotFound", err)
	}
}

func TestCreateUsersKeepsUsersAndHistoryOne(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	_, js := startJS(t)
	users := newUsers(t, js)
	if err := users.Add(ctx, "alice", "correct horse", nil); err != nil {
		t.Fatal(err)
	}
	for _, replicas := range []int{1, 0} { // again as configured; again keeping the replicas
		again, err := auth.CreateUsers(ctx, js, replicas)
		if err != nil {
			t.Fatalf("CreateUsers(replicas %d) on an existing bucket: %v", replicas, err)
		}
		if _, err := again.Get(ctx, "alice"); err != nil {
			t.Errorf("after CreateUsers(replicas %d): %v", replicas, err)
		}
	}
	opened, err := auth.OpenUsers(ctx, js)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := opened.Get(ctx, "alice"); err != nil {
		t.Errorf("OpenUsers: %v", err)
	}
	kv, err := js.KeyValue(ctx, auth.UsersBucket)
	if err != nil {
		t.Fatal(err)
	}
	st, err := kv.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.History() != 1 {
		t.Errorf("bucket history = %d, want 1: a replaced password hash is not kept", st.History())
	}
}

// watchKV is a KV bucket whose WatchAll delivers the entries given, in a
// channel left open or closed as the case says.
type watchKV struct {
	jetstream.KeyValue // the rest is not called
	updates            chan jetstream.KeyValueEntry
}

func (kv watchKV) WatchAll(context.Context, ...jetstream.WatchOpt) (jetstream.KeyWatcher, error) {
	return kv, nil
}
func (kv watchKV) Updates() <-chan jetstream.KeyValueEntry { return kv.updates }
func (kv watchKV) Stop() error                             { return nil }

type entry struct {
	jetstream.KeyValueEntry
	key string
}

func (e entry) Key() string   { return e.key }
func (e entry) Value() []byte { return []byte(`{"name":"` + e.key + `","permissions":[]}`) }

// List returns a list only when the watch said it was complete (a nil
// entry): a watch that stops before, as when the connection closes, is an
// error, not a shorter list.
func TestUsersListCutShort(t *testing.T) {
	t.Parallel()
	bob, alice := entry{key: "bob"}, entry{key: "alice"}
	for _, tc := range []struct {
		name    string
		sent    []jetstream.KeyValueEntry // nil is the end of the list
		closed  bool
		want    []string
		wantErr string
	}{
		{"complete", []jetstream.KeyValueEntry{bob, alice, nil}, false, []string{"alice", "bob"}, ""},
		{"complete, then closed", []jetstream.KeyValueEntry{bob, alice, nil}, true, []string{"alice", "bob"}, ""},
		{"empty store", []jetstream.KeyValueEntry{nil}, true, []string{}, ""},
		{"closed after one user", []jetstream.KeyValueEntry{bob}, true, nil, "stopped before its end (1 users received)"},
		{"closed before any user", nil, true, nil, "stopped before its end (0 users received)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			updates := make(chan jetstream.KeyValueEntry, len(tc.sent))
			for _, e := range tc.sent {
				updates <- e
			}
			if tc.closed {
				close(updates)
			}
			list, err := auth.UsersOn(watchKV{updates: updates}).List(testContext(t))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) || list != nil {
					t.Errorf("List = %v, %v; want an error saying %q", list, err, tc.wantErr)
				}
				return
			}
			names := []string{}
			for _, u := range list {
				names = append(names, u.Name)
			}
			if err != nil || !slices.Equal(names, tc.want) {
				t.Errorf("List = %v, %v; want %v", names, err, tc.want)
			}
		})
	}
}

// A cancelled listing is ctx's error, whichever of ctx and the watch
// stopping List sees first.
func TestUsersListCancelled(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(testContext(t))
	cancel()
	updates := make(chan jetstream.KeyValueEntry, 1)
	updates <- entry{key: "bob"}
	close(updates)
	for range 20 { // select picks at random
		if _, err := auth.UsersOn(watchKV{updates: updates}).List(ctx); !errors.Is(err, context.Canceled) {
			t.Fatalf("List with a cancelled ctx: %v, want context.Canceled", err)
		}
	}
}
