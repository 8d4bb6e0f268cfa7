package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/user"
	"strings"

	"github.com/relaymail/relay/internal/admin"
	"github.com/relaymail/relay/internal/config"
	"github.com/relaymail/relay/relay"
	"github.com/relaymail/relay/relay/inject"
)

// sendmailArgs is a parsed /usr/sbin/sendmail command line.
type sendmailArgs struct {
	req        relay.SendmailRequest
	ignoreDots bool
	data       string
	file       string
	dataSet    bool
}

// parseSendmail reads sendmail's traditional options, which the flag package
// cannot: values may be attached (-fFROM), -oi is one option, and options
// that only tune the old sendmail's own behaviour are accepted and have no
// effect here (-oem, -odi, -B8BITMIME, -bm, -v, -U and the like).
func parseSendmail(args []string) (sendmailArgs, error) {
	var a sendmailArgs
	a.data = config.Default().Data
	value := func(i *int, opt, attached string) (string, error) {
		if attached != "" {
			return attached, nil
		}
		if *i+1 >= len(args) {
			return "", usagef("sendmail: %s needs a value", opt)
		}
		*i++
		return args[*i], nil
	}
	for i := 0; i < len(args); i++ {
		arg := args[i]
		if arg == "--" {
			a.req.Rcpts = append(a.req.Rcpts, args[i+1:]...)
			break
		}
		if !strings.HasPrefix(arg, "-") || arg == "-" {
			a.req.Rcpts = append(a.req.Rcpts, arg)
			continue
		}
		var err error
		switch name := strings.TrimLeft(arg, "-"); {
		case name == "data" || strings.HasPrefix(name, "data="):
			a.data, err = value(&i, "--data", strings.TrimPrefix(strings.TrimPrefix(name, "data"), "="))
			a.dataSet = true
		case name == "config" || strings.HasPrefix(name, "config="):
			a.file, err = value(&i, "--config", strings.TrimPrefix(strings.TrimPrefix(name, "config"), "="))
		case name == "t":
			a.req.Extract = true
		case name == "i" || name == "oi":
			a.ignoreDots = true
		case strings.HasPrefix(arg, "-f"), strings.HasPrefix(arg, "-r"):
			a.req.From, err = value(&i, arg[:2], arg[2:])
		case strings.HasPrefix(arg, "-F"):
			a.req.FullName, err = value(&i, "-F", arg[2:])
		case strings.HasPrefix(arg, "-N"):
			var v string
			v, err = value(&i, "-N", arg[2:])
			for n := range strings.SplitSeq(strings.ToUpper(v), ",") {
				a.req.Notify = append(a.req.Notify, strings.TrimSpace(n))
			}
		case strings.HasPrefix(arg, "-R"):
			a.req.Ret, err = value(&i, "-R", arg[2:])
		case strings.HasPrefix(arg, "-V"):
			a.req.EnvID, err = value(&i, "-V", arg[2:])
		case strings.HasPrefix(arg, "-o"), strings.HasPrefix(arg, "-B"), arg == "-bm", arg == "-v", arg == "-U", arg == "-m":
			// No effect here.
		default:
			return a, usagef("sendmail: unknown option %s (supported: -t -i -oi -f FROM -F NAME -N NOTIFY -R RET -V ENVID)", arg)
		}
		if err != nil {
			return a, err
		}
	}
	return a, nil
}

// sendmailCmd submits the message on stdin through the running server.
func sendmailCmd(args []string, stdin io.Reader) error {
	a, err := parseSendmail(args)
	if err != nil {
		return err
	}
	dir := a.data
	if !a.dataSet && a.file != "" {
		cfg := config.Default()
		if err := cfg.Load(a.file); err != nil {
			return err
		}
		if env := os.Getenv("RELAY_DATA"); env == "" {
			dir = cfg.Data
		}
	}
	if len(a.req.Rcpts) == 0 && !a.req.Extract {
		return usagef("sendmail: no recipients (give them as arguments, or use -t)")
	}
	a.req.Login = loginName()
	body := stdin
	if !a.ignoreDots {
		body = inject.UntilDot(stdin)
	}
	var reply relay.SendmailReply
	err = admin.NewClient(admin.Socket(dir)).Upload(context.Background(), "sendmail", a.req, body, &reply)
	if errors.Is(err, admin.ErrNoServer) {
		return fmt.Errorf("relay sendmail hands mail to the running server, and none answers in %s: start relay serve, or point --data (or RELAY_DATA) at its data directory", dir)
	}
	if err != nil {
		return fmt.Errorf("sendmail: %w", err)
	}
	return nil
}

// loginName is the invoking user, for the envelope sender and the
// Received: field.
func loginName() string {
	if u, err := user.Current(); err == nil && u.Username != "" {
		return u.Username
	}
	for _, k := range []string{"LOGNAME", "USER"} {
		if v := os.Getenv(k); v != "" {
			return v
		}
	}
	return ""
}
