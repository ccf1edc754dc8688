-- v1: the items table and its first rows
CREATE TABLE items (id integer PRIMARY KEY, name text NOT NULL);
INSERT INTO items (id, name) VALUES (1, 'apple'), (2, 'pear'), (3, 'plum');
