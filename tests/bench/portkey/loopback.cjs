// Preloaded into Portkey's gateway for the benchmarks: its server listens on every interface
// and takes no host option, so a listen() given only a port is bound to 127.0.0.1 instead.
const net = require('node:net');
const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (port, ...rest) {
  if (typeof port === 'number' && (rest.length === 0 || typeof rest[0] !== 'string'))
    return listen.call(this, port, '127.0.0.1', ...rest);
  return listen.call(this, port, ...rest);
};
