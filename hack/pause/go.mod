module permafrost.dev/hack/pause

go 1.26
