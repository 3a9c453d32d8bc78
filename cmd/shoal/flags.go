package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/spf13/pflag"

	"github.com/shoal-dev/shoal/functions"
	"github.com/shoal-dev/shoal/manifest"
	"github.com/shoal-dev/shoal/platform/broker"
)

// byteSize is a flag holding a size in bytes, written as a number with an
// optional unit: 8MiB, 512KiB, 1MB, 1048576.
type byteSize int64

var byteUnits = []struct {
	suffix string
	n      int64
}{
	{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30},
	{"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9},
	{"K", 1 << 10}, {"M", 1 << 20}, {"G", 1 << 30},
	{"B", 1},
}

func (b *byteSize) Set(s string) error {
	num, mult := strings.TrimSpace(s), int64(1)
	for _, u := range byteUnits {
		if rest, ok := strings.CutSuffix(num, u.suffix); ok {
			num, mult = strings.TrimSpace(rest), u.n
			break
		}
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n <= 0 {
		return fmt.Errorf("want a positive size like 8MiB, 512KiB or 1048576")
	}
	*b = byteSize(n * mult)
	return nil
}

func (b *byteSize) String() string {
	switch n := int64(*b); {
	case n%(1<<20) == 0:
		return strconv.FormatInt(n>>20, 10) + "MiB"
	case n%(1<<10) == 0:
		return strconv.FormatInt(n>>10, 10) + "KiB"
	default:
		return strconv.FormatInt(n, 10)
	}
}

func (b *byteSize) Type() string { return "size" }

// maxBodyLimit is the largest --max-body: a body travels in one NATS
// message, and NATS caps messages at 64 MiB; 1 MiB is kept for headers.
const maxBodyLimit = 63 << 20

func checkMaxBody(b byteSize) error {
	if b > maxBodyLimit {
		return fmt.Errorf("--max-body %s: at most 63MiB, since a body travels in one NATS message (64 MiB at most)", b.String())
	}
	return nil
}

// natsFlags are the flags of commands that connect to a NATS server.
type natsFlags struct {
	url         string
	creds       string
	nkey        string
	inboxPrefix string
	context     string
	// user and password come from a context only.
	user, password string
	// fs tells which flags were given, once registered.
	fs *pflag.FlagSet
}

func (f *natsFlags) register(fs *pflag.FlagSet) {
	f.fs = fs
	fs.StringVar(&f.url, "nats", nats.DefaultURL, "NATS server URL; several, comma-separated, for a cluster (user:password@ in the URL for plain auth)")
	fs.StringVar(&f.creds, "nats-creds", "", "NATS credentials file (JWT and NKey seed) for decentralized auth")
	fs.StringVar(&f.nkey, "nats-nkey", "", "NATS NKey seed file (shoal up keeps one per role in DATA/credentials)")
	fs.StringVar(&f.inboxPrefix, "nats-inbox-prefix", "", "inbox prefix for replies (the client role must use "+broker.ClientInboxPrefix+")")
	fs.StringVar(&f.context, "nats-context", "", "take URL, credentials and inbox prefix from this nats CLI context (shoal up saves one named shoal)")
}

// defaultNKey uses seed as the credentials when none were given.
func (f *natsFlags) defaultNKey(seed string) {
	if f.creds != "" || f.nkey != "" || f.context != "" {
		return
	}
	if _, err := os.Stat(seed); err == nil {
		f.nkey = seed
	}
}

// defaultInbox uses prefix for reply inboxes unless told otherwise: on
// shoal up's server each role may read its own prefix only.
func (f *natsFlags) defaultInbox(prefix string) {
	if f.inboxPrefix == "" && f.context == "" {
		f.inboxPrefix = prefix
	}
}

// natsContext is the part of a nats CLI context file Shoal reads.
type natsContext struct {
	URL         string `json:"url"`
	User        string `json:"user"`
	Password    string `json:"password"`
	Creds       string `json:"creds"`
	NKey        string `json:"nkey"`
	InboxPrefix string `json:"inbox_prefix"`
}

// natsContextDir is where the nats CLI keeps its contexts.
func natsContextDir() (string, error) {
	dir := os.Getenv("XDG_CONFIG_HOME")
	if dir == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return "", fmt.Errorf("find the nats CLI's context directory: %w", err)
		}
		dir = filepath.Join(home, ".config")
	}
	return filepath.Join(dir, "nats", "context"), nil
}

// applyContext fills what the flags left unset from the named context.
func (f *natsFlags) applyContext() error {
	if f.context == "" {
		return nil
	}
	dir, err := natsContextDir()
	if err != nil {
		return err
	}
	path := filepath.Join(dir, f.context+".json")
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("--nats-context %s: %w", f.context, err)
	}
	var c natsContext
	if err := json.Unmarshal(b, &c); err != nil {
		return fmt.Errorf("--nats-context %s: %s: %w", f.context, path, err)
	}
	if c.URL != "" && (f.fs == nil || !f.fs.Changed("nats")) {
		f.url = c.URL
	}
	if c.User != "" && !strings.Contains(f.url, "@") {
		f.user, f.password = c.User, c.Password
	}
	if f.creds == "" && f.nkey == "" {
		f.creds, f.nkey = c.Creds, c.NKey
	}
	if f.inboxPrefix == "" {
		f.inboxPrefix = c.InboxPrefix
	}
	return nil
}

// connect opens a NATS connection that keeps reconnecting and logs its
// state changes; name shows in the server's connection list.
func (f *natsFlags) connect(name string, extra ...nats.Option) (*nats.Conn, error) {
	opts := []nats.Option{
		nats.Name(name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(time.Second),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				logger.Warn("nats disconnected", "connection", name, "error", err)
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			logger.Info("nats reconnected", "connection", name, "server", nc.ConnectedUrlRedacted())
		}),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			subject := ""
			if sub != nil {
				subject = sub.Subject
			}
			logger.Error("nats error", "connection", name, "subject", subject, "error", err)
		}),
	}
	if err := f.applyContext(); err != nil {
		return nil, err
	}
	if f.creds != "" {
		opts = append(opts, nats.UserCredentials(f.creds))
	}
	if f.nkey != "" {
		o, err := nats.NkeyOptionFromSeed(f.nkey)
		if err != nil {
			return nil, fmt.Errorf("--nats-nkey: %w", err)
		}
		opts = append(opts, o)
	}
	if f.user != "" {
		opts = append(opts, nats.UserInfo(f.user, f.password))
	}
	if f.inboxPrefix != "" {
		opts = append(opts, nats.CustomInboxPrefix(f.inboxPrefix))
	}
	opts = append(opts, extra...)
	nc, err := nats.Connect(f.url, opts...)
	if err != nil {
		return nil, fmt.Errorf("connect to NATS at %s: %w", redact(f.url), err)
	}
	return nc, nil
}

// redact hides passwords in NATS URLs before they reach a log or an error.
func redact(urls string) string {
	parts := strings.Split(urls, ",")
	for i, u := range parts {
		if at := strings.LastIndex(u, "@"); at >= 0 {
			if scheme := strings.Index(u, "://"); scheme >= 0 && scheme < at {
				parts[i] = u[:scheme+3] + "***@" + u[at+1:]
			} else {
				parts[i] = "***@" + u[at+1:]
			}
		}
	}
	return strings.Join(parts, ",")
}

// extraBuiltins are functions added to this binary's built-ins; only the
// tests set them (a function that crashes its worker, one that sleeps).
var extraBuiltins map[string]http.Handler

// builtins are the functions this binary serves.
func builtins(deps functions.Deps) map[string]http.Handler {
	b := functions.Builtins(deps)
	maps.Copy(b, extraBuiltins)
	return b
}

// loadManifest loads a manifest against the built-ins of this binary.
func loadManifest(path string) (*manifest.Manifest, error) {
	names := functions.Names()
	for name := range extraBuiltins {
		names = append(names, name)
	}
	m, err := manifest.Load(path, manifest.Options{Builtins: names})
	if err != nil {
		var errs manifest.Errors
		if errors.As(err, &errs) {
			return nil, fmt.Errorf("%s has %d problem(s):\n%w", path, len(errs), err)
		}
		return nil, err
	}
	return m, nil
}
