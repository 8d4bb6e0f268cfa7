// Command relay is the mail relay: `relay serve` runs it; the other
// subcommands manage a running (or stopped) relay. See DESIGN.md for the
// command line; exit status is 0 on success, 1 on an error the user can fix
// (the message says how), 2 on bad usage.
package main

import (
	"cmp"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"slices"
	"strings"

	"github.com/relaymail/relay/internal/config"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = ""

// usageError is bad usage: exit status 2. cmd names the subcommand whose
// usage is printed with it ("" for the general one).
type usageError struct{ cmd, msg string }

func (e usageError) Error() string { return e.msg }

func usagef(format string, a ...any) error { return usageError{msg: fmt.Sprintf(format, a...)} }

const usage = `usage:
  relay [--data DIR] [--store S] [--config FILE] SUBCOMMAND ...
  relay serve [--config FILE] [--data DIR] [flags]     run the relay
  relay user add|passwd|del|list ADDRESS [--password-stdin] [--force]
  relay queue list [--json] [filters] | show ID [--body] [--json] | tail [-n N] [-f] [--json] |
              flush [ID...] | hold ID... | release ID... | delete ID... | bounce ID...
  relay sendmail [-t] [-i] [-f FROM] [-F NAME] [RCPT...]   queue the message on stdin
  relay config check [--config FILE]                    validate settings
  relay store migrate | backup FILE | restore FILE      the store's schema and engine-neutral snapshots
  relay version
Every subcommand takes --data DIR (default ./relay-data, env RELAY_DATA),
--store badger|postgres://... (env RELAY_STORE) and --config FILE, before or
after the subcommand. 'relay SUBCOMMAND -h' tells more.
`

// helps is the usage text of each subcommand, printed for -h and on bad usage
// of that subcommand.
var helps = map[string]string{
	"serve": `usage: relay serve [--config FILE] [--data DIR] [flags]
Runs the relay: SMTP, submission, IMAP, the HTTP listener and the delivery loop.
'relay serve -h' lists every flag with its default.
`,
	"user": `usage:
  relay user add ADDRESS [--password-stdin] [--force]   make an account (asks for the password twice)
  relay user passwd ADDRESS [--password-stdin]           change its password
  relay user del ADDRESS [--force]                       delete it (--force: and its mail)
  relay user list [--json]                               accounts with their message counts
A password has at least 8 characters. add refuses an address outside the local
domains unless --force is given; without a running server, the local domains are
those of --config FILE, else those relay serve last ran with. Flags: --data DIR, --config FILE.
`,
	"queue": `usage:
  relay queue list [--json] [--limit N] [--state S] [--domain D] [--older-than DURATION]
  relay queue show ID [--body] [--json]    envelope, recipients, history (also of a message that left)
  relay queue tail [-n N] [-f] [--json]    the mail log's events
  relay queue flush [ID...]                retry now (all, or the given messages)
  relay queue hold ID... | release ID... | delete ID... | bounce ID...
Flags: --data DIR, --config FILE. 'relay queue VERB -h' lists a verb's flags.
`,
	"sendmail": `usage: relay sendmail [-t] [-i|-oi] [-f FROM] [-F NAME] [-N NOTIFY] [-R RET] [-V ENVID] [RCPT...]
Reads a message on standard input and hands it to the running server, like
/usr/sbin/sendmail. -t takes the recipients from To, Cc and Bcc; without -i a
line with a single dot ends the input; -f sets the envelope sender (default:
your login name at the first local domain); -F the name in a From: made for
you. A bare name is a local user. Flags: --data DIR, --config FILE.
`,
	"config": `usage: relay config check [--config FILE] [flags]
Validates the configuration file and any serve flags given with it, and names
each setting that is wrong.
`,
	"store": `usage:
  relay store migrate          bring a PostgreSQL store's schema to this version (serve does it at start)
  relay store backup FILE      write a consistent snapshot of everything, engine-neutral, while the server runs
  relay store restore FILE     load a snapshot into an empty store of either engine
Flags: --data DIR, --store badger|postgres://..., --config FILE. A site moves from badger to PostgreSQL
with backup on the one and restore on the other.
`,
	"version": `usage: relay version
Prints the module version and the VCS revision the binary was built from.
`,
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

// run dispatches a command line and maps errors to exit codes.
func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	err := dispatch(args, stdin, stdout, stderr)
	var ue usageError
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, &ue):
		help := usage
		if ue.cmd != "" {
			help = helps[ue.cmd]
		}
		fmt.Fprintf(stderr, "relay: %s\n\n%s", ue.msg, help)
		return 2
	default:
		fmt.Fprintf(stderr, "relay: %s\n", err)
		return 1
	}
}

func dispatch(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	cmd, rest, err := hoistGlobals(args)
	if errors.Is(err, errPrintUsage) {
		fmt.Fprint(stdout, usage)
		return nil
	}
	if err != nil {
		return err
	}
	if len(rest) > 0 && isHelp(rest[0]) && cmd != "serve" && cmd != "config" {
		fmt.Fprint(stdout, helps[cmd])
		return nil
	}
	var run func() error
	switch cmd {
	case "serve":
		run = func() error { return serve(rest, stderr) }
	case "user":
		run = func() error { return userCmd(rest, stdin, stdout, stderr) }
	case "queue":
		run = func() error { return queueCmd(rest, stdout, stderr) }
	case "sendmail":
		run = func() error { return sendmailCmd(rest, stdin) }
	case "config":
		run = func() error { return configCmd(rest, stdout, stderr) }
	case "store":
		run = func() error { return storeCmd(rest, stdout, stderr) }
	case "version", "--version", "-v":
		if len(rest) > 0 {
			return usageError{cmd: "version", msg: "version takes no arguments"}
		}
		fmt.Fprintln(stdout, "relay", versionString())
		return nil
	case "help":
		if len(rest) > 0 && helps[rest[0]] != "" {
			fmt.Fprint(stdout, helps[rest[0]])
			return nil
		}
		fmt.Fprint(stdout, usage)
		return nil
	default:
		return usagef("unknown subcommand %q", cmd)
	}
	err = run()
	// Bad usage inside a subcommand shows that subcommand's usage.
	var ue usageError
	if errors.As(err, &ue) && ue.cmd == "" && helps[cmd] != "" {
		ue.cmd = cmd
		return ue
	}
	return err
}

func isHelp(arg string) bool { return arg == "-h" || arg == "-help" || arg == "--help" }

// globalFlags are the flags that may stand before the subcommand (`relay
// --data DIR queue list`); each takes a value. hoistGlobals moves them behind
// the subcommand's verb, where every subcommand parses them.
var globalFlags = []string{"data", "config", "store"}

// verbCommands are the subcommands whose first argument is a verb.
var verbCommands = []string{"user", "queue", "config", "store"}

// hoistGlobals splits args into the subcommand and its arguments, with any
// global flags given before the subcommand moved to where it reads them.
func hoistGlobals(args []string) (cmd string, rest []string, err error) {
	var moved []string
	i := 0
	for ; i < len(args) && strings.HasPrefix(args[i], "-") && !isVersionFlag(args[i]); i++ {
		arg := args[i]
		if isHelp(arg) {
			return "", nil, errPrintUsage
		}
		name, _, hasValue := strings.Cut(strings.TrimLeft(arg, "-"), "=")
		if !slices.Contains(globalFlags, name) {
			return "", nil, usagef("%s cannot stand before the subcommand (only --data, --config and --store can)", arg)
		}
		moved = append(moved, arg)
		if !hasValue {
			if i+1 >= len(args) {
				return "", nil, usagef("%s needs a value", arg)
			}
			i++
			moved = append(moved, args[i])
		}
	}
	if i >= len(args) {
		return "", nil, usagef("a subcommand is needed")
	}
	cmd, rest = args[i], args[i+1:]
	if len(moved) == 0 {
		return cmd, rest, nil
	}
	at := 0
	if slices.Contains(verbCommands, cmd) && len(rest) > 0 && !strings.HasPrefix(rest[0], "-") {
		at = 1 // behind the verb
	}
	out := append(slices.Clone(rest[:at]), moved...)
	return cmd, append(out, rest[at:]...), nil
}

func isVersionFlag(arg string) bool { return arg == "--version" || arg == "-v" }

// errPrintUsage asks run to print the general usage and exit 0.
var errPrintUsage = fmt.Errorf("%w", flag.ErrHelp)

// versionString is the module version and the VCS revision the binary was
// built from, as the go command records them in the build info (a version
// set with -ldflags -X main.version wins).
func versionString() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return cmp.Or(version, "(unknown)")
	}
	return formatVersion(cmp.Or(version, bi.Main.Version), bi.Settings)
}

func formatVersion(v string, settings []debug.BuildSetting) string {
	var rev, at string
	modified := false
	for _, s := range settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.time":
			at = s.Value
		case "vcs.modified":
			modified = s.Value == "true"
		}
	}
	v = cmp.Or(v, "(devel)")
	if rev == "" {
		return v
	}
	v += " (revision " + rev
	if at != "" {
		v += " of " + at
	}
	if modified {
		v += ", with local changes"
	}
	return v + ")"
}

// flagError turns a flag parse failure into bad usage.
func flagError(err error) error {
	var fe *config.FileError
	if err == nil || errors.Is(err, flag.ErrHelp) || errors.As(err, &fe) {
		return err
	}
	return usageError{msg: err.Error()}
}
