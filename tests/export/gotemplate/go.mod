module tunesmith/gotemplate

go 1.19
