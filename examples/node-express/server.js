var app = require('express')()

app.get('/ping', function(req, res) {
  res.send('pong!')
})

module.exports = app
