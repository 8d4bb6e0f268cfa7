// Command relay is the mail relay: `relay serve` runs it; the other
// subcommands manage a running (or stopped) relay. See DESIGN.md for the
// command line; exit status is 0 on success, 1 on an error the user can fix
// (the message says how), 2 on bad usage.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime/debug"

	"github.com/relaymail/relay/internal/config"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = ""

// usageError is bad usage: exit status 2.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usagef(format string, a ...any) error { return usageError{fmt.Sprintf(format, a...)} }

const usage = `usage:
  relay serve [--config FILE] [--data DIR] [flags]     run the relay
  relay user add|passwd|del|list ADDRESS [--password-stdin] [--force]
  relay queue list [--json] | show ID [--body] [--json] | tail [-n N] [-f] [--json] |
              flush [ID...] | hold ID... | release ID... | delete ID... | bounce ID...
  relay sendmail [-t] [-i] [-f FROM] [-F NAME] [RCPT...]   queue the message on stdin
  relay config check [--config FILE]                    validate settings
  relay version
Every subcommand takes --data DIR (default ./relay-data, env RELAY_DATA).
Run 'relay serve -h' for the serve flags.
`

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
		fmt.Fprintf(stderr, "relay: %s\n\n%s", ue.msg, usage)
		return 2
	default:
		fmt.Fprintf(stderr, "relay: %s\n", err)
		return 1
	}
}

func dispatch(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return usagef("a subcommand is needed")
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "serve":
		return serve(rest, stderr)
	case "user":
		return userCmd(rest, stdin, stdout, stderr)
	case "queue":
		return queueCmd(rest, stdout, stderr)
	case "sendmail":
		return sendmailCmd(rest, stdin)
	case "config":
		return configCmd(rest, stdout, stderr)
	case "version", "--version", "-v":
		fmt.Fprintln(stdout, "relay", versionString())
		return nil
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	default:
		return usagef("unknown subcommand %q", cmd)
	}
}

func versionString() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		v := bi.Main.Version
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" && len(s.Value) >= 12 {
				v += " " + s.Value[:12]
			}
		}
		return v
	}
	return "(unknown)"
}

// flagError turns a flag parse failure into bad usage.
func flagError(err error) error {
	var fe *config.FileError
	if err == nil || errors.Is(err, flag.ErrHelp) || errors.As(err, &fe) {
		return err
	}
	return usageError{err.Error()}
}
