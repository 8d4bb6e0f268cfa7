//go:build !linux

package main

import (
	"fmt"
	"io"
	"os"

	"golang.org/x/term"
)

// askPassword prompts and reads a password without echo.
func askPassword(f *os.File, stderr io.Writer, prompt string) (string, error) {
	fmt.Fprint(stderr, prompt)
	b, err := term.ReadPassword(int(f.Fd()))
	fmt.Fprintln(stderr)
	return string(b), err
}
