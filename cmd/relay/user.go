package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"

	"golang.org/x/term"

	"github.com/relaymail/relay/internal/admin"
	"github.com/relaymail/relay/internal/config"
	"github.com/relaymail/relay/mailbox"
	"github.com/relaymail/relay/relay"
)

func userCmd(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return usagef("user: a verb is needed (add, passwd, del, list)")
	}
	verb, args := args[0], args[1:]
	fs := flag.NewFlagSet("relay user "+verb, flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cf clientFlags
	cf.bind(fs)
	pwStdin := fs.Bool("password-stdin", false, "read the password from the first line of standard input")
	force := fs.Bool("force", false, "add: allow an address outside the local domains; del: delete the user's mail too")
	asJSON := fs.Bool("json", false, "list: print JSON")
	pos, err := config.ParseInterleaved(fs, args)
	if err != nil {
		return flagError(err)
	}
	dir, err := cf.resolve(fs)
	if err != nil {
		return err
	}
	req := relay.UserRequest{Force: *force}
	switch verb {
	case "list":
		if len(pos) != 0 {
			return usagef("user list takes no arguments")
		}
	case "add", "passwd", "del":
		if len(pos) != 1 {
			return usagef("user %s takes one ADDRESS", verb)
		}
		req.Address = pos[0]
	default:
		return usagef("user: unknown verb %q", verb)
	}
	if verb == "add" || verb == "passwd" {
		req.Password, err = readPassword(stdin, stderr, *pwStdin)
		if err != nil {
			return err
		}
	}
	var users []mailbox.UserInfo
	err = withBoxes(dir, verb == "add",
		func(c *admin.Client) error {
			if verb == "list" {
				return c.Call(context.Background(), "user/list", req, &users)
			}
			return c.Call(context.Background(), "user/"+verb, req, nil)
		},
		func(boxes *mailbox.Store) error {
			domains, err := localDomains(cf.file, boxes)
			if err != nil {
				return err
			}
			res, err := relay.UserOp(boxes, domains, verb, req)
			if u, ok := res.([]mailbox.UserInfo); ok {
				users = u
			}
			return err
		})
	if err != nil {
		return err
	}
	switch verb {
	case "list":
		if *asJSON {
			if users == nil {
				users = []mailbox.UserInfo{}
			}
			return printJSON(stdout, users)
		}
		tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "ADDRESS\tMESSAGES\tSIZE\tCREATED")
		for _, u := range users {
			fmt.Fprintf(tw, "%s\t%d\t%s\t%s\n", u.Address, u.Messages, size(u.Size), u.Created.Format("2006-01-02"))
		}
		return tw.Flush()
	case "add":
		fmt.Fprintf(stdout, "user %s added\n", mailbox.NormalizeUser(req.Address))
	case "passwd":
		fmt.Fprintf(stdout, "password of %s changed\n", mailbox.NormalizeUser(req.Address))
	case "del":
		fmt.Fprintf(stdout, "user %s deleted\n", mailbox.NormalizeUser(req.Address))
	}
	return nil
}

// readPassword takes the password from stdin's first line, or asks twice on
// the terminal without echo.
func readPassword(stdin io.Reader, stderr io.Writer, fromStdin bool) (string, error) {
	if fromStdin {
		line, err := bufio.NewReader(stdin).ReadString('\n')
		if err != nil && !errors.Is(err, io.EOF) {
			return "", fmt.Errorf("read password: %w", err)
		}
		pw := strings.TrimRight(line, "\r\n")
		if pw == "" {
			return "", errors.New("the password on standard input is empty")
		}
		return pw, nil
	}
	f, ok := stdin.(*os.File)
	if !ok || !term.IsTerminal(int(f.Fd())) {
		return "", errors.New("no terminal to ask for the password: pipe it in with --password-stdin")
	}
	ask := func(prompt string) (string, error) { return askPassword(f, stderr, prompt) }
	pw, err := ask("Password: ")
	if err != nil {
		return "", err
	}
	again, err := ask("Again: ")
	if err != nil {
		return "", err
	}
	if pw != again {
		return "", errors.New("the passwords do not match")
	}
	return pw, nil
}

// withBoxes is withSpool for the mailbox store; create makes the database
// when there is none yet.
func withBoxes(w where, create bool, remote func(*admin.Client) error, local func(*mailbox.Store) error) error {
	return withStore(w, create, remote, func(st *relay.Storage) error { return local(mailbox.New(st, nil)) })
}

// localDomains are the local domains for `relay user` without a running
// server: those of the --config file when one is given, else those the
// server last ran with, else the default.
func localDomains(file string, boxes *mailbox.Store) ([]string, error) {
	cfg := config.Default()
	if file != "" {
		if err := cfg.Load(file); err != nil {
			return nil, err
		}
		return cfg.Domains, nil
	}
	if d, err := boxes.Domains(); err != nil || len(d) > 0 {
		return d, err
	}
	return cfg.Domains, nil
}
