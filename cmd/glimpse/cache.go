package main

import (
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"glimpse/proxy"
)

// cacheCommand manages a running proxy's cache through its admin listener.
func cacheCommand() *cli.Command {
	admin := func() cli.Flag {
		return &cli.StringFlag{Name: "admin", Value: "http://127.0.0.1:9293", EnvVars: []string{"GLIMPSE_ADMIN_URL"},
			Usage: "`URL` of the proxy's admin listener (serve --admin-listen)"}
	}
	client := func(c *cli.Context) proxy.AdminClient { return proxy.AdminClient{URL: c.String("admin")} }
	return &cli.Command{
		Name:  "cache",
		Usage: "list, prefetch and evict the images a running `glimpse serve --upstream` keeps",
		Subcommands: []*cli.Command{
			{
				Name:  "list",
				Usage: "list cached and queued images",
				Flags: []cli.Flag{admin(), outputFlag()},
				Action: func(c *cli.Context) error {
					asJSON, err := jsonOutput(c)
					if err != nil {
						return err
					}
					l, err := client(c).List(c.Context)
					if err != nil {
						return cli.Exit("cache list: "+err.Error(), 1)
					}
					if asJSON {
						writeJSON(c.App.Writer, l)
						return nil
					}
					tw := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
					fmt.Fprintln(tw, "IMAGE\tSIZE\tHITS\tLAST ACCESS")
					for _, e := range l.CachedImages {
						last := time.UnixMicro(int64(e.LastAccessed * 1e6)).UTC().Format(time.RFC3339)
						fmt.Fprintf(tw, "%s\t%s\t%d\t%s\n", e.ImageID, sizeString(e.Size), e.Hits, last)
					}
					for _, id := range l.QueuedImages {
						fmt.Fprintf(tw, "%s\t-\t-\tqueued\n", id)
					}
					return tw.Flush()
				},
			},
			{
				Name:      "prefetch",
				Usage:     "queue images to be cached",
				ArgsUsage: "ID...",
				Flags:     []cli.Flag{admin()},
				Action: func(c *cli.Context) error {
					if c.NArg() == 0 {
						return cli.Exit("cache prefetch: no image ID", 1)
					}
					for _, id := range c.Args().Slice() {
						if err := client(c).Prefetch(c.Context, id); err != nil {
							return cli.Exit("cache prefetch: "+err.Error(), 1)
						}
						fmt.Fprintf(c.App.Writer, "queued %s\n", id)
					}
					return nil
				},
			},
			{
				Name:      "evict",
				Usage:     "remove images from the cache (and the queue); --all empties it",
				ArgsUsage: "ID... | --all",
				Flags: []cli.Flag{admin(),
					&cli.BoolFlag{Name: "all", Usage: "evict every image"},
					&cli.StringFlag{Name: "target", Usage: "with --all: `cache` or queue only (default both)"}},
				Action: func(c *cli.Context) error {
					if c.Bool("all") {
						if c.NArg() > 0 {
							return cli.Exit("cache evict: --all takes no image ID", 1)
						}
						if err := client(c).Clear(c.Context, c.String("target")); err != nil {
							return cli.Exit("cache evict: "+err.Error(), 1)
						}
						return nil
					}
					if c.NArg() == 0 {
						return cli.Exit("cache evict: no image ID (or --all)", 1)
					}
					for _, id := range c.Args().Slice() {
						if err := client(c).Evict(c.Context, id); err != nil {
							return cli.Exit("cache evict: "+err.Error(), 1)
						}
						fmt.Fprintf(c.App.Writer, "evicted %s\n", id)
					}
					return nil
				},
			},
		},
	}
}
