package broker

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nkeys"
)

// Role is what one kind of NATS identity may do on a Shoal deployment. The
// embedded server knows one NKey identity per role; each connection proves
// its role with the NKey's seed, which never crosses the wire.
//
// Every role but admin receives replies on an inbox prefix of its own
// (see [InboxPrefix]), and may subscribe to that prefix only: no role
// reads another's replies. Runners answer only to those inboxes, so a
// caller cannot steer an answer onto another subject by choosing the
// reply subject of its request.
type Role string

// The roles.
const (
	// RoleAdmin may do anything: `shoal up` itself, `shoal user`, `shoal
	// key`.
	RoleAdmin Role = "admin"
	// RoleGateway may send invocations, submit asynchronous calls and
	// read their records, discover runners, read the function catalog
	// and the public signing keys, and exchange live figures with the
	// other gateways (shoal.stats). It cannot read the dead letters,
	// which hold the callers' requests and tokens.
	RoleGateway Role = "gateway"
	// RoleRunner may take invocations from the queue groups, answer them,
	// pull and settle asynchronous calls (records, dead letters, results,
	// callbacks), read the function catalog and the public signing keys,
	// and read functions' code (shoal_code) and secrets (shoal_secrets)
	// to run them. It cannot read users: runners run function code.
	RoleRunner Role = "runner"
	// RoleAuth is a runner that also serves the auth function: it may
	// read users and count failed logins too.
	RoleAuth Role = "auth"
	// RoleClient may send invocations, submit asynchronous calls in its
	// own namespace (calls.NAME.nats) and read their records and results,
	// and read the replies on its inbox prefix, and nothing else: it
	// cannot subscribe to function subjects,
	// so it can neither take other callers' invocations (and their
	// tokens) nor pose as a runner, and it cannot read the replies the
	// gateway receives. Every program holding the client credentials is
	// the same principal and can read the others' replies.
	RoleClient Role = "client"
)

// Roles lists every role.
var Roles = []Role{RoleAdmin, RoleGateway, RoleRunner, RoleAuth, RoleClient}

// ClientInboxPrefix is the inbox prefix a client-role connection must use
// (nats.CustomInboxPrefix, or the nats CLI's --inbox-prefix).
const ClientInboxPrefix = "_INBOX_client"

// InboxPrefix is the inbox prefix a role's connections must use; "" for
// RoleAdmin, which keeps the NATS default, _INBOX.
func InboxPrefix(role Role) string {
	if role == RoleAdmin {
		return ""
	}
	return "_INBOX_" + string(role)
}

// Bucket names whose JetStream API subjects the roles are allowed: the
// function catalog, and the KV buckets of the auth work (public signing
// keys, users and failed-login counters).
const (
	functionsBucket = "shoal_functions"
	keysBucket      = "shoal_keys"
	usersBucket     = "shoal_users"
	failuresBucket  = "shoal_login_failures"
	callsBucket     = "shoal_calls"
	callsStream     = "SHOAL_CALLS"
	clientStream    = "SHOAL_CALLS_NATS"
	callbackStream  = "SHOAL_CALLBACKS"
	// codeBucket is the object store of functions' code (platform/bundle),
	// secretsBucket the KV bucket of their secrets (platform/secrets).
	codeBucket    = "shoal_code"
	secretsBucket = "shoal_secrets"
)

// runCode is what a runner needs to run functions deployed as code: to
// fetch their bundles from the object store and to read their secrets.
// Only runners may read secrets; gateways and clients may not.
var runCode = concat(streamRead("OBJ_"+codeBucket), kvRead(secretsBucket))

// submitCalls is what the gateway's asynchronous calls take: publishing
// on calls.NAME (two tokens: not calls.NAME.retry, where re-driven calls
// are trusted with their submission time, nor the clients'
// calls.NAME.nats) and recording them as queued.
var submitCalls = concat([]string{"calls.*", "$KV." + callsBucket + ".>"}, kvRead(callsBucket))

// listCalls is what listing the calls changed most recently takes beyond
// reading the records' bucket (the console's GET /system/calls, see
// calls.Queue.Recent): pulling the headers of the bucket's stream from an
// ordered consumer, which kvRead lets it create and delete.
var listCalls = []string{"$JS.API.CONSUMER.MSG.NEXT.KV_" + callsBucket + ".>"}

// runCalls is what a runner needs for asynchronous calls: pulling from
// its functions' consumers, settling calls (records, dead letters,
// results, callbacks) and delivering callbacks.
var runCalls = concat(
	pullFrom(callsStream), pullFrom(clientStream), pullFrom(callbackStream),
	[]string{"dlq.>", "callbacks.>", "results.>", "$KV." + callsBucket + ".>"},
	kvRead(callsBucket),
)

// pullFrom is what sharing the durable pull consumers of a stream takes.
func pullFrom(stream string) []string {
	return []string{
		"$JS.API.CONSUMER.CREATE." + stream,
		"$JS.API.CONSUMER.CREATE." + stream + ".>",
		"$JS.API.CONSUMER.INFO." + stream + ".>",
		"$JS.API.CONSUMER.MSG.NEXT." + stream + ".>",
		"$JS.ACK." + stream + ".>",
	}
}

// callerInboxes are where runners may publish: the reply inboxes of the
// roles that send invocations and discovery requests.
var callerInboxes = []string{
	"_INBOX.>", // admin
	InboxPrefix(RoleGateway) + ".>",
	ClientInboxPrefix + ".>",
}

// streamAcks are where the gateway acknowledges the messages of streamed
// answers (invocation.HeaderStream): a subject below each runner role's
// inbox prefix, .stream., that runners subscribe to for that alone. Not
// the runners' inboxes as a whole: their JetStream replies arrive there,
// and a gateway could forge them.
var streamAcks = []string{
	"_INBOX.stream.>", // runners connected as admin
	InboxPrefix(RoleRunner) + ".stream.>",
	InboxPrefix(RoleAuth) + ".stream.>",
}

// gatewayStats is the gateways' stats exchange (gateway.StatsSubject,
// gateway.StatsReplyPrefix): each gateway answers requests on shoal.stats
// with its traffic counts, on a reply subject under shoal.stats.reply.
// that the asking gateway subscribes to. Gateways publish and subscribe
// to both: the figures are not secret between gateways (any gateway
// serves them to operators), and the replies do not go to inboxes, so a
// gateway still cannot read or write another's invocation replies on
// _INBOX_gateway.>. No other role may publish or subscribe there: a
// client can neither read the figures nor feed false ones.
var gatewayStats = []string{"shoal.stats", "shoal.stats.>"}

// Permissions returns the NATS subject permissions of a role; nil for
// RoleAdmin (no restriction).
func Permissions(role Role) *server.Permissions {
	inbox := []string{InboxPrefix(role) + ".>"}
	switch role {
	case RoleGateway:
		return &server.Permissions{
			Publish:   &server.SubjectPermission{Allow: concat([]string{"fn.>", "$SRV.>"}, kvRead(keysBucket), kvRead(functionsBucket), submitCalls, listCalls, gatewayStats, streamAcks)},
			Subscribe: &server.SubjectPermission{Allow: concat(inbox, gatewayStats)},
		}
	case RoleRunner:
		return &server.Permissions{
			Publish:   &server.SubjectPermission{Allow: concat(callerInboxes, kvRead(keysBucket), kvRead(functionsBucket), runCalls, runCode)},
			Subscribe: &server.SubjectPermission{Allow: concat([]string{"fn.>", "$SRV.>"}, inbox)},
		}
	case RoleAuth:
		return &server.Permissions{
			Publish: &server.SubjectPermission{Allow: concat(
				callerInboxes,
				kvRead(keysBucket),
				kvRead(functionsBucket),
				kvRead(usersBucket),
				kvRead(failuresBucket),
				runCalls,
				runCode,
				[]string{
					"$KV." + failuresBucket + ".>",
					// A runner that serves the auth function creates its
					// buckets, empty, when they do not exist yet.
					"$JS.API.STREAM.CREATE.KV_" + usersBucket,
					"$JS.API.STREAM.CREATE.KV_" + failuresBucket,
				},
			)},
			Subscribe: &server.SubjectPermission{Allow: concat([]string{"fn.>", "$SRV.>"}, inbox)},
		}
	case RoleClient:
		return &server.Permissions{
			// Asynchronous calls in the clients' own namespace: submitted
			// on calls.NAME.nats, ids n.ID, records read by key, results
			// on results.NAME.nats; not those submitted through the
			// gateway, and never writing records.
			Publish: &server.SubjectPermission{Allow: []string{
				"fn.>", "$SRV.>", "calls.*.nats",
				"$JS.API.STREAM.INFO.KV_" + callsBucket,
				"$JS.API.DIRECT.GET.KV_" + callsBucket + ".$KV." + callsBucket + ".n.>",
			}},
			Subscribe: &server.SubjectPermission{Allow: concat(inbox, []string{"results.*.nats"})},
		}
	default:
		return nil
	}
}

// kvRead is what reading and watching a KV bucket takes: stream info,
// direct and classic gets, and an ordered consumer for watches.
func kvRead(bucket string) []string { return streamRead("KV_" + bucket) }

// streamRead is what reading a KV or object store's stream takes: its
// info, direct and classic gets of one message, and ordered consumers
// (watches, object chunks).
func streamRead(stream string) []string {
	return []string{
		"$JS.API.INFO",
		"$JS.API.STREAM.INFO." + stream,
		"$JS.API.DIRECT.GET." + stream,
		"$JS.API.DIRECT.GET." + stream + ".>",
		"$JS.API.STREAM.MSG.GET." + stream,
		"$JS.API.CONSUMER.CREATE." + stream,
		"$JS.API.CONSUMER.CREATE." + stream + ".>",
		"$JS.API.CONSUMER.DELETE." + stream + ".>",
		"$JS.API.CONSUMER.INFO." + stream + ".>",
		"$JS.FC." + stream + ".>",
	}
}

func concat(lists ...[]string) []string {
	var out []string
	seen := map[string]bool{}
	for _, l := range lists {
		for _, s := range l {
			if !seen[s] {
				seen[s] = true
				out = append(out, s)
			}
		}
	}
	return out
}

// Credentials are the NKey identities of the roles, kept as seed files in
// one directory.
type Credentials struct {
	// Dir holds one seed file per role, ROLE.nk, mode 0600.
	Dir string
	// Public are the roles' public NKeys.
	Public map[Role]string
}

// SeedFile is the path of a role's seed file, for nats.NkeyOptionFromSeed
// or the nats CLI's --nkey.
func (c *Credentials) SeedFile(role Role) string {
	return filepath.Join(c.Dir, string(role)+".nk")
}

// Users returns the server-side identities, one per role, for
// [Config.Users].
func (c *Credentials) Users() []*server.NkeyUser {
	users := make([]*server.NkeyUser, 0, len(Roles))
	for _, role := range Roles {
		users = append(users, &server.NkeyUser{Nkey: c.Public[role], Permissions: Permissions(role)})
	}
	return users
}

// EnsureCredentials loads the role identities from dir, creating the
// directory and any missing seed file first. Existing seeds are kept, so
// the identities survive restarts.
func EnsureCredentials(dir string) (*Credentials, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("nats credentials: %w", err)
	}
	c := &Credentials{Dir: dir, Public: map[Role]string{}}
	for _, role := range Roles {
		path := c.SeedFile(role)
		pub, err := publicKeyOfSeed(path)
		if errors.Is(err, fs.ErrNotExist) {
			if err = newSeed(path); err == nil {
				pub, err = publicKeyOfSeed(path)
			}
		}
		if err != nil {
			return nil, fmt.Errorf("nats credentials for role %s: %w", role, err)
		}
		c.Public[role] = pub
	}
	return c, nil
}

// newSeed writes a new user seed to path, failing if the file appeared
// meanwhile.
func newSeed(path string) error {
	kp, err := nkeys.CreateUser()
	if err != nil {
		return err
	}
	defer kp.Wipe()
	seed, err := kp.Seed()
	if err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(append(seed, '\n')); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
