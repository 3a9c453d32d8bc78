require('./server').listen(process.env.PORT)
