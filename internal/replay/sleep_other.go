//go:build !linux

package replay

import "time"

func nanosleep(d time.Duration) { time.Sleep(d) }
