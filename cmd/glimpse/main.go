// Command glimpse inspects, checks, converts and serves virtual machine disk images.
//
// Each verb lives in its own file and is a thin layer over a library package: flags in,
// one call, output to the app's writers (so that tests can run the CLI in process).
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/urfave/cli/v2"
)

// version is set by the Makefile from git describe.
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args, os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run runs the CLI and returns its exit code.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	app := newApp(stdin, stdout, stderr)
	code := 0
	app.ExitErrHandler = func(c *cli.Context, err error) {
		if err == nil {
			return
		}
		if ec, ok := err.(cli.ExitCoder); ok {
			if msg := ec.Error(); msg != "" {
				fmt.Fprintln(stderr, "glimpse:", msg)
			}
			code = ec.ExitCode()
			return
		}
		fmt.Fprintln(stderr, "glimpse:", err)
		code = 1
	}
	if err := app.RunContext(ctx, permuteArgs(app, args)); err != nil && code == 0 {
		// Usage errors (unknown flag, missing argument) do not reach ExitErrHandler.
		fmt.Fprintln(stderr, "glimpse:", err)
		code = 1
		if ec, ok := err.(cli.ExitCoder); ok {
			code = ec.ExitCode()
		}
	}
	return code
}

func newApp(stdin io.Reader, stdout, stderr io.Writer) *cli.App {
	return &cli.App{
		Name:            "glimpse",
		Usage:           "inspect, check, convert and serve virtual machine disk images",
		Version:         version,
		Reader:          stdin,
		Writer:          stdout,
		ErrWriter:       stderr,
		HideHelpCommand: true,
		Commands: []*cli.Command{
			infoCommand(),
			checkCommand(),
			convertCommand(), compareCommand(), mapCommand(),
			ovaCommand(),
			serveCommand(), cacheCommand(),
		},
	}
}

// permuteArgs moves a subcommand's flags in front of its arguments, so that
// `glimpse info disk.qcow2 --output=json` works as it does with qemu-img (urfave/cli stops
// at the first argument otherwise). "--" ends the flags; "-" is an argument (stdin/stdout).
func permuteArgs(app *cli.App, args []string) []string {
	if len(args) < 3 {
		return args
	}
	cmd := findCommand(app.Commands, args[1])
	if cmd == nil {
		return args
	}
	prefix := 2
	for len(cmd.Subcommands) > 0 && len(args) > prefix {
		sub := findCommand(cmd.Subcommands, args[prefix])
		if sub == nil {
			break
		}
		cmd = sub
		prefix++
	}
	takesValue := map[string]bool{}
	for _, f := range cmd.Flags {
		_, isBool := f.(*cli.BoolFlag)
		for _, n := range f.Names() {
			takesValue[n] = !isBool
		}
	}
	var flags, positional []string
	rest := args[prefix:]
	for i := 0; i < len(rest); i++ {
		a := rest[i]
		if a == "--" {
			positional = append(positional, rest[i+1:]...)
			break
		}
		if len(a) < 2 || a[0] != '-' {
			positional = append(positional, a)
			continue
		}
		flags = append(flags, a)
		name := strings.TrimLeft(a, "-")
		if strings.Contains(name, "=") {
			continue
		}
		if takesValue[name] && i+1 < len(rest) {
			i++
			flags = append(flags, rest[i])
		}
	}
	out := append([]string{}, args[:prefix]...)
	out = append(out, flags...)
	if len(positional) > 0 {
		out = append(out, "--")
		out = append(out, positional...)
	}
	return out
}

func findCommand(cmds []*cli.Command, name string) *cli.Command {
	for _, c := range cmds {
		if c.HasName(name) {
			return c
		}
	}
	return nil
}
